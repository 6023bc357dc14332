"""Samples -> token ids and labels.

Chat SFT: the conversation is rendered with its template and tokenized once; labels copy the tokens
of every assistant answer plus its end-of-turn token and are -100 everywhere else. Where an answer
starts and ends is found by rendering prefixes of the conversation and tokenizing them: the tokens
of "everything up to this answer" must be a prefix of the tokens of the whole conversation, else the
template re-tokenizes differently in context and the labels would silently be wrong, so we refuse.

Pretraining: BOS + text + EOS, loss on every token, long documents cut into ``max_length`` chunks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from tuner.core.errors import DataError, TunerError
from tuner.data.anchors import ANCHOR
from tuner.data.templates.base import ChatTemplate, split_system

IGNORE = -100


@dataclass
class EncodeStats:
    """Counts from :func:`encode_samples`.

    Attributes:
        samples: samples read.
        encoded: rows produced (a long pretraining document gives several).
        dropped_empty_after_truncation: chat samples left without a supervised token by truncation.
        truncated: chat samples cut at max_length.
        chunked: pretraining documents split into several rows.
        tokens: tokens in the produced rows.
        supervised_tokens: tokens with a label in the produced rows.
        lengths: token length of every sample before truncation (for statistics).
    """

    samples: int = 0
    encoded: int = 0
    dropped_empty_after_truncation: int = 0
    truncated: int = 0
    chunked: int = 0
    tokens: int = 0
    supervised_tokens: int = 0
    lengths: list[int] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict:
        data = dataclasses.asdict(self)
        del data["lengths"]
        return data


def check_conversation(messages: Sequence[dict]) -> None:
    """Raise TunerError unless roles alternate user/assistant after an optional system message and
    the conversation ends with an assistant message.

    >>> check_conversation([{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}])
    """
    _, turns = split_system(messages)
    if not turns:
        raise TunerError("the conversation has no user/assistant messages")
    for index, message in enumerate(turns):
        expected = "user" if index % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise TunerError(f"turn {index + 1}: expected a {expected} message, got {message['role']}")
    if turns[-1]["role"] != "assistant":
        raise TunerError("the conversation must end with an assistant message")


def _first_mismatch(a: Sequence, b: Sequence) -> int:
    for index, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return index
    return min(len(a), len(b))


def _prefix_error(
    template: ChatTemplate, what: str, tokenizer, part: list[int], whole: list[int]
) -> TunerError:
    at = _first_mismatch(part, whole)

    def show(ids):
        return repr(tokenizer.decode(ids[max(0, at - 3) : at + 3]))

    return TunerError(
        f"template {template.name}: the tokens of {what} are not a prefix of the tokens of the whole "
        f"conversation (first difference at token {at}: {part[at : at + 3]} {show(part)} vs "
        f"{whole[at : at + 3]} {show(whole)}); the template re-tokenizes differently in context, so labels "
        "would be wrong. Use a template made for this tokenizer."
    )


def _answer_end(tail: str, content: str, end_of_turn: str) -> int | None:
    """Where the supervised part ends in ``tail`` (the rendered text after the generation prompt).

    >>> _answer_end(" Paris </s><s>", "Paris", "</s>")
    11
    """
    # Templates may trim the content (Llama 3's official one does), so look for the trimmed text.
    needle = content.strip()
    at = tail.find(needle) if needle else -1
    start = at + len(needle) if at >= 0 else 0
    eot = tail.find(end_of_turn, start)
    return None if eot < 0 else eot + len(end_of_turn)


def chat_ids_and_labels(
    messages: Sequence[dict], tokenizer, template: ChatTemplate
) -> tuple[list[int], list[int]]:
    """Tokens and labels of a whole conversation, without truncation.

    >>> # chatml, [user "Hi", assistant "Yo"]:
    >>> # text   "<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\nYo<|im_end|>\\n"
    >>> # labels  -100 ...................................................  Yo <|im_end|>  -100
    """
    check_conversation(messages)
    full_text = template.render(messages)
    spans = []  # (prompt text, text up to and including the end of turn) per assistant turn
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = template.render(messages[:index], add_generation_prompt=True)
        upto = full_text if index == len(messages) - 1 else template.render(messages[: index + 1])
        shorter, longer = (prompt, upto) if not upto.startswith(prompt) else (upto, full_text)
        if not longer.startswith(shorter):
            at = _first_mismatch(shorter, longer)
            raise TunerError(
                f"template {template.name}: rendering the conversation up to turn {index} is not a prefix of "
                f"rendering it whole (first difference at character {at}); the template rewrites earlier turns "
                "and cannot be used to train on every assistant turn"
            )
        end = _answer_end(upto[len(prompt) :], message["content"], template.end_of_turn)
        if end is None:
            raise TunerError(
                f"template {template.name}: the end-of-turn {template.end_of_turn!r} does not follow the "
                f"assistant's answer in turn {index}; choose a named template (for example: default)"
            )
        spans.append((prompt, upto[: len(prompt) + end]))
    # The rendered text carries BOS itself where the family wants one; never add special tokens twice.
    texts = [full_text] + [text for pair in spans for text in pair]
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    ids = list(encoded[0])
    labels = [IGNORE] * len(ids)
    for turn, (prompt_ids, upto_ids) in enumerate(zip(encoded[1::2], encoded[2::2], strict=True)):
        for part, what in (
            (prompt_ids, f"the prompt of answer {turn + 1}"),
            (upto_ids, f"answer {turn + 1}"),
        ):
            if list(part) != ids[: len(part)]:
                raise _prefix_error(template, what, tokenizer, list(part), ids)
        labels[len(prompt_ids) : len(upto_ids)] = ids[len(prompt_ids) : len(upto_ids)]
    return ids, labels


def encode_chat(
    messages: Sequence[dict], tokenizer, template: ChatTemplate, max_length: int | None
) -> dict | None:
    """Encode one conversation for SFT, truncated to ``max_length`` tokens (keeping the start).

    Returns ``{"input_ids": [...], "labels": [...]}``, or None when truncation left no supervised
    token.

    >>> # encode_chat([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}],
    >>> #             tok, get_template("chatml"), 2048)
    >>> # -> {"input_ids": [4, 419, 211, 84, 85, 5, 211, 4, ...], "labels": [-100, ..., <Yo>, 5, -100]}
    """
    ids, labels = chat_ids_and_labels(messages, tokenizer, template)
    if max_length is not None:
        ids, labels = ids[:max_length], labels[:max_length]
    if all(label == IGNORE for label in labels):
        return None
    return {"input_ids": ids, "labels": labels}


def _pretrain_ids(text: str, tokenizer) -> list[int]:
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if tokenizer.bos_token_id is not None:
        ids.insert(0, tokenizer.bos_token_id)
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return ids


def encode_pretrain(text: str, tokenizer, max_length: int | None) -> list[dict]:
    """Encode a document for incremental pretraining: BOS + text + EOS, cut into chunks.

    Every token is a label. A last chunk of a single token is dropped: it predicts nothing.

    >>> # encode_pretrain("abc", tok, 3) with tokens a b c -> two rows
    >>> # [{"input_ids": [<s>, a, b], "labels": [<s>, a, b]}, {"input_ids": [c, </s>], "labels": [c, </s>]}]
    """
    return _chunks(_pretrain_ids(text, tokenizer), max_length)


def _chunks(ids: list[int], max_length: int | None) -> list[dict]:
    size = max_length or max(len(ids), 1)
    rows = []
    for start in range(0, len(ids), size):
        piece = ids[start : start + size]
        if len(piece) > 1 or start == 0:
            rows.append({"input_ids": piece, "labels": list(piece)})
    return rows


def _located(exc: TunerError, sample: dict, index: int) -> DataError:
    source = sample.get("source") or {}
    message = exc.message if isinstance(exc, DataError) else str(exc)
    return DataError(
        message,
        path=source.get("path"),
        line=source.get("line"),
        row=None if source.get("line") else source.get("row") or index + 1,
    )


def encode_samples(
    samples: Iterable[dict],
    tokenizer,
    template: ChatTemplate | None,
    max_length: int | None,
    *,
    on_error: Callable[[DataError], None] | None = None,
) -> tuple[list[dict], EncodeStats]:
    """Encode chat (``{"messages": ...}``) and pretraining (``{"text": ...}``) samples.

    Chat samples are truncated to ``max_length`` and dropped when no supervised token is left;
    pretraining documents are cut into chunks. A sample that cannot be encoded raises DataError
    naming its file and line, or, with ``on_error``, is handed to it and skipped (check-data
    collects them all).

    >>> # encode_samples([{"text": "abc"}, {"messages": [...]}], tok, template, 2048)
    >>> # -> ([{"input_ids": [...], "labels": [...]}, ...], EncodeStats(samples=2, encoded=2, ...))
    """
    stats = EncodeStats()
    rows: list[dict] = []
    for index, sample in enumerate(samples):
        stats.samples += 1
        try:
            if "messages" in sample:
                if template is None:
                    raise TunerError("chat samples need a chat template")
                ids, labels = chat_ids_and_labels(sample["messages"], tokenizer, template)
                stats.lengths.append(len(ids))
                if max_length is not None and len(ids) > max_length:
                    stats.truncated += 1
                    ids, labels = ids[:max_length], labels[:max_length]
                if all(label == IGNORE for label in labels):
                    stats.dropped_empty_after_truncation += 1
                    continue
                produced = [{"input_ids": ids, "labels": labels}]
                if sample.get(ANCHOR):
                    produced[0][ANCHOR] = sample[ANCHOR]
            elif "text" in sample:
                ids = _pretrain_ids(sample["text"], tokenizer)
                stats.lengths.append(len(ids))
                produced = _chunks(ids, max_length)
                stats.chunked += len(produced) > 1
            else:
                raise TunerError("a sample needs 'messages' (chat) or 'text' (pretraining)")
        except TunerError as exc:
            if on_error is None:
                raise _located(exc, sample, index) from None
            on_error(_located(exc, sample, index))
            continue
        for row in produced:
            stats.encoded += 1
            stats.tokens += len(row["input_ids"])
            stats.supervised_tokens += sum(label != IGNORE for label in row["labels"])
            rows.append(row)
    return rows, stats
