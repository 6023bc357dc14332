"""Anchor conversations: rows that hold the base model's own answers, marked from the record to the batch.

A record of any chat format may carry ``"anchor": true`` (make-identity writes it on its general
conversations, which the base model answered itself). Such a conversation holds nothing new to learn;
it is there to keep the tuned model answering as the base did. The mark travels with the sample
(``sample["anchor"]``) and the encoded row (``row["anchor"]``); records without it are untouched, so
every file written before it reads and trains as it did.

The mark has two values:
- ``true``: the base model's whole answer. With ``anchor_kl_weight`` 0 it is an ordinary conversation
  (its answer is supervised, the behaviour of every earlier run); with a weight its answer tokens move
  from ``labels`` to ``anchor_labels``, where the loss pulls the tuned model's next-token distribution
  towards the base model's instead of towards the base's greedy text.
- ``"kl"``: a KL probe (make-identity's ``kl_probes``): the opening of the base model's answer, cut
  after a few dozen tokens. It is a prefix to hold the base's distribution on, not text to learn (as
  text it would teach answers that stop mid-sentence), so it trains only through the KL term: its
  tokens always go to ``anchor_labels``, and with ``anchor_kl_weight`` 0 it is left out of training.
"""

from __future__ import annotations

from tuner.core.errors import DataError

# The record, sample and encoded-row key that marks an anchor conversation.
ANCHOR = "anchor"
# Its value on a KL probe (true on a whole answer).
KL_ONLY = "kl"
# The batch key holding the anchor rows' answer tokens (-100 elsewhere), beside "labels".
ANCHOR_LABELS = "anchor_labels"
IGNORE = -100


def read_anchor_mark(record) -> bool | str:
    """The record's anchor mark: True (a whole answer), KL_ONLY (a KL probe), or False when absent;
    any other value is refused.

    >>> read_anchor_mark({"conversation": [], "anchor": True}), read_anchor_mark({"text": "x"})
    (True, False)
    >>> read_anchor_mark({"conversation": [], "anchor": "kl"})
    'kl'
    """
    if not isinstance(record, dict) or record.get(ANCHOR) is None:
        return False
    value = record[ANCHOR]
    if not isinstance(value, bool) and value != KL_ONLY:
        raise DataError(
            f"'anchor' must be true, false or \"{KL_ONLY}\", got {value!r}",
            field=ANCHOR,
            hint='mark conversations answered by the base model itself with "anchor": true (or "kl" for '
            "a KL probe, an answer's opening that trains only through anchor_kl_weight), or leave the "
            "field out",
        )
    return value


def move_anchor_labels(rows: list[dict]) -> list[dict]:
    """Encoded rows with every anchor row's supervised tokens moved from ``labels`` to
    ``anchor_labels`` (-100 in every other row), so that a batch says which tokens the anchor loss
    reads and the cross-entropy never sees them. The ``anchor`` mark itself is dropped.

    >>> move_anchor_labels([{"input_ids": [1, 2], "labels": [-100, 2], "anchor": True},
    ...                     {"input_ids": [3, 4], "labels": [-100, 4]}])
    [{'input_ids': [1, 2], 'labels': [-100, -100], 'anchor_labels': [-100, 2]}, {'input_ids': [3, 4], 'labels': [-100, 4], 'anchor_labels': [-100, -100]}]
    """
    moved = []
    for row in rows:
        kept = {key: value for key, value in row.items() if key != ANCHOR}
        blank = [IGNORE] * len(kept["labels"])
        if row.get(ANCHOR):
            kept["labels"], kept[ANCHOR_LABELS] = blank, list(kept["labels"])
        else:
            kept[ANCHOR_LABELS] = blank
        moved.append(kept)
    return moved


def without_anchor_marks(rows: list[dict]) -> tuple[list[dict], int]:
    """(encoded rows without the ``anchor`` mark, how many KL probes were left out): whole-answer
    anchors train as ordinary conversations; a KL probe, an answer cut short, is no text to learn."""
    kept = [
        {key: value for key, value in row.items() if key != ANCHOR}
        for row in rows
        if row.get(ANCHOR) != KL_ONLY
    ]
    return kept, len(rows) - len(kept)


def settle_whole_answers(rows: list[dict], how: str) -> tuple[list[dict], int]:
    """(encoded rows with the whole-answer anchors (mark ``true``) as ``how`` says, how many rows were
    left out): "kl" keeps their mark (the KL term reads them), "text" drops it (they train as ordinary
    conversations), "off" leaves those rows out (the KL probes alone hold the base model). KL probes
    keep their mark in every case."""
    if how == "kl":
        return rows, 0
    if how == "off":
        kept = [row for row in rows if row.get(ANCHOR) is not True]
        return kept, len(rows) - len(kept)
    return [
        {key: value for key, value in row.items() if key != ANCHOR} if row.get(ANCHOR) is True else row
        for row in rows
    ], 0
