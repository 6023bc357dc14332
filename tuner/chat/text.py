"""Chat templates and stop words: which template renders the prompt, where an answer ends, and
which part of the generated text a user may see.

Pure text and token-id logic (no torch, no model): ``tuner.chat.ChatSession`` uses it to set up a
session and to filter what it streams; ``tuner.export`` uses it for exported tokenizers and
Modelfiles. The names are re-exported by ``tuner.chat``, so ``from tuner.chat import visible_text``
keeps working.
"""

from __future__ import annotations

from tuner.data.templates import resolve_template

# ------------------------------------------------------------------------------------ templates


def resolve_chat_template(tokenizer, name: str | None = None):
    """The ChatTemplate for ``tokenizer``: a named one, else the tokenizer's own (tuner.data.templates.base)."""

    return resolve_template(tokenizer, name)


def single_token_id(tokenizer, text: str | None) -> int | None:
    """The id of ``text`` when the tokenizer has it as one token (e.g. ``<|im_end|>``), else None."""
    if not text:
        return None
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) == 1 and ids[0] != tokenizer.unk_token_id:
        return ids[0]
    return None


def stop_token_ids(tokenizer, template) -> list[int]:
    """Token ids generation must stop at: the tokenizer's eos, the template's end-of-turn token and
    every stop word that is a single token."""
    ids = []
    candidates = [tokenizer.eos_token, template.end_of_turn, *(template.stop_words or [])]
    for text in candidates:
        token_id = single_token_id(tokenizer, text)
        if token_id is not None and token_id not in ids:
            ids.append(token_id)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.insert(0, tokenizer.eos_token_id)
    return ids


def stop_strings(tokenizer, template, extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Every string at which an answer ends (the end-of-turn marker, stop words, eos text)."""
    words = [template.end_of_turn, *(template.stop_words or []), tokenizer.eos_token, *extra]
    out = []
    for word in words:
        if word and word not in out:
            out.append(word)
    return out


# --------------------------------------------------------------------------------- text filtering


def visible_text(
    text: str, stops: list[str], special: list[str] = (), *, final: bool = False
) -> tuple[str, bool]:
    """The part of generated ``text`` a user may see, and whether a stop word was reached.

    Text from the first stop word on is dropped. While generation goes on (``final=False``) a tail
    that could still grow into a stop word, or an incomplete UTF-8 character, is held back.

    Example:
        >>> visible_text("Paris.<|im_end|>\\nmore", ["<|im_end|>"])
        ('Paris.', True)
        >>> visible_text("Paris. <|im", ["<|im_end|>"])
        ('Paris.', False)
    """
    cut, stopped = len(text), False
    for word in stops:
        at = text.find(word)
        if at != -1 and at < cut:
            cut, stopped = at, True
    shown = text[:cut]
    for token in special:  # other special tokens (e.g. a stray <|im_start|>) are not text
        if token:
            shown = shown.replace(token, "")
    if not stopped and not final:
        hold = 0
        for word in stops:
            for size in range(min(len(word) - 1, len(shown)), 0, -1):
                if shown.endswith(word[:size]):
                    hold = max(hold, size)
                    break
        shown = shown[: len(shown) - hold]
        # Half of a multi-byte character, and trailing whitespace that the final answer strips:
        # held back so that the deltas always add up to the final answer.
        shown = shown.rstrip("\ufffd")
    return shown.strip(), stopped
