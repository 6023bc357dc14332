"""The tokenizer as a GGUF file describes it, for tuner.export.gguf: tokens, token types, merges or
scores, the pre-tokenizer's name, special token ids, whether BOS is added, the chat template and its
end-of-turn token, and the model name llama.cpp reads tokenizer behaviour from.

A byte-level BPE's pre-tokenizer name is read off its split regex (one llama.cpp knows by name), never
guessed; a SentencePiece vocabulary's scores follow the merge order of the tokenizer.json training
used. What llama.cpp would tokenize differently from training is refused with the reason.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from tuner.chat.text import single_token_id
from tuner.core.errors import ModelError

log = logging.getLogger(__name__)

CONVERTER = "llama.cpp's convert_hf_to_gguf.py"
# Split regexes of byte-level BPE tokenizers -> llama.cpp's pre-tokenizer name for them.
PRE_TOKENIZERS = {
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
    "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+": "llama-bpe",
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
    "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+": "qwen2",
    # o200k's split (GPT-4o), used by Phi-4-mini
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    "|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    "|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+": "gpt-4o",
}
_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")


@dataclass
class Vocabulary:
    """The tokenizer as llama.cpp's metadata describes it."""

    model: str  # tokenizer.ggml.model: "gpt2" (byte-level BPE) or "llama" (SentencePiece)
    pre: str  # tokenizer.ggml.pre
    tokens: list
    types: list
    merges: list | None = None  # gpt2
    scores: list | None = None  # llama
    add_space_prefix: bool | None = None  # llama


def pre_tokenizer_name(tokenizer_json: dict) -> str:
    """llama.cpp's name for how this byte-level BPE tokenizer splits text before merging."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [step.get("type") for step in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"  # GPT-2's own regex inside ByteLevel (llama.cpp's name for it has the hyphen)
    splits = [step for step in steps if step.get("type") == "Split"]
    if len(splits) == 1 and kinds[-1] == "ByteLevel":
        regex = (splits[0].get("pattern") or {}).get("Regex")
        if regex in PRE_TOKENIZERS:
            return PRE_TOKENIZERS[regex]
    raise ModelError(
        f"the tokenizer splits text in a way tuner cannot name for llama.cpp ({json.dumps(pre)[:200]}); "
        f"use {CONVERTER} for this model"
    )


def _tokenizer_json(folder: Path, tokenizer) -> dict:
    """The tokenizer as training ran it (the loaded one: transformers 5 may rebuild parts of the
    folder's tokenizer.json from the tokenizer class), in tokenizer.json's form."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ModelError(
            f"{folder}: GGUF export needs a fast (tokenizers) tokenizer; this one is {type(tokenizer).__name__}"
        )
    return json.loads(backend.to_str())


def _ids(tokenizer, vocab_size: int):
    """(token by id, special ids, added ids) of the ids the model has embeddings for. Added tokens past
    the embeddings (Gemma 3 1B's tokenizer has <image_soft_token> at 262144, its model 262144 rows) are
    left out, as llama.cpp's converter leaves them out; a base-vocabulary token past them is refused."""
    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    special = {int(i) for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    added = {int(i) for i in tokenizer.added_tokens_decoder}
    beyond = sorted(i for i in by_id if i >= vocab_size)
    if set(beyond) - added:
        raise ModelError(
            f"the tokenizer has ids up to {max(by_id)} but the model only {vocab_size} embeddings"
        )
    if beyond:
        log.warning(
            "GGUF: leaving out %d added token(s) the model has no embeddings for: %s",
            len(beyond),
            ", ".join(by_id[i] for i in beyond[:5]),
        )
        by_id = {i: token for i, token in by_id.items() if i < vocab_size}
    return by_id, special, added


def vocabulary(folder: Path, tokenizer, vocab_size: int) -> Vocabulary:
    """The tokenizer of ``folder`` as GGUF metadata, padded to the model's ``vocab_size`` with unused
    placeholder tokens: byte-level BPE (Llama 3, Qwen, SmolLM2, Phi-4-mini) or SentencePiece-style
    BPE with byte fallback (Mistral, Gemma, Phi-3.5). Anything else is refused."""
    data = _tokenizer_json(folder, tokenizer)
    model = data.get("model") or {}
    if model.get("type") == "BPE" and model.get("byte_fallback"):
        return sentencepiece_vocabulary(data, tokenizer, vocab_size)
    if model.get("type") != "BPE":
        raise ModelError(
            f"GGUF export writes BPE tokenizers (byte-level, or SentencePiece BPE with byte fallback); "
            f"this one is {model.get('type')}: use {CONVERTER} for this model"
        )
    return byte_level_vocabulary(data, tokenizer, vocab_size)


def byte_level_vocabulary(data: dict, tokenizer, vocab_size: int) -> Vocabulary:
    import gguf

    # The split the loaded tokenizer really does: transformers 5 may replace tokenizer.json's own
    # with the model class's (Qwen2Tokenizer does), and training used the loaded one.
    pre = pre_tokenizer_name(data)
    by_id, special, added = _ids(tokenizer, vocab_size)
    tokens, types = [], []
    for index in range(vocab_size):
        if index not in by_id:
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(by_id[index])
            types.append(
                gguf.TokenType.CONTROL
                if index in special
                else gguf.TokenType.USER_DEFINED
                if index in added
                else gguf.TokenType.NORMAL
            )
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"].get("merges", [])]
    return Vocabulary("gpt2", pre, tokens, types, merges=merges)


def sentencepiece_spacing(tokenizer) -> bool:
    """llama.cpp's add_space_prefix for a SentencePiece tokenizer: whether it puts a ``▁`` in front of
    text. llama.cpp does so at the start and after every special token; a tokenizer that does it at
    the start only (Metaspace's prepend_scheme "first": Mistral v0.3, transformers' LlamaTokenizer)
    gets False, which is exact for every prompt that opens with a special token (a chat template's
    ``<s>[INST]``, ``<|user|>``) and leaves one ``▁`` off a raw completion prompt's first word.
    Spaces must become ``▁`` as llama.cpp writes them; anything else is refused."""
    at_start = "".join(tokenizer.tokenize("a b"))
    marker = next((t for t in (tokenizer.eos_token, tokenizer.bos_token) if t), None)
    after = "".join(tokenizer.tokenize(f"{marker}a b")[1:]) if marker else at_start
    prefix_only_after_special = at_start == "a▁b" and after == "▁a▁b"
    if at_start not in ("▁a▁b", "a▁b") or after not in ("▁a▁b", "a▁b") or prefix_only_after_special:
        raise ModelError(
            f"the tokenizer turns 'a b' into {at_start!r} (after a special token {after!r}), not SentencePiece's "
            f"'▁a▁b' or 'a▁b': llama.cpp would tokenize differently from training; use {CONVERTER} for this model"
        )
    if at_start != after:
        log.info("GGUF: no space prefix (exact after special tokens, as chat prompts are)")
    return after == "▁a▁b"


def sentencepiece_vocabulary(data: dict, tokenizer, vocab_size: int) -> Vocabulary:
    """A SentencePiece-style BPE vocabulary (tokenizer.ggml.model ``llama``). llama.cpp merges the
    adjacent pair whose joined token scores highest, so each token scores minus the rank of the first
    merge in tokenizer.json that makes it: llama.cpp then merges in the order training's tokenizer did.
    Byte tokens (``<0x0A>``) are BYTE, the unknown token UNKNOWN, special added tokens CONTROL."""
    import gguf

    add_space_prefix = sentencepiece_spacing(tokenizer)
    by_id, special, added = _ids(tokenizer, vocab_size)
    merges = data["model"].get("merges", [])
    rank: dict[str, int] = {}
    for index, merge in enumerate(merges):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        rank.setdefault(left + right, index)
    unmerged = -float(len(merges) + 1)
    tokens, types, scores = [], [], []
    for index in range(vocab_size):
        token = by_id.get(index)
        if token is None:
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
            scores.append(-10000.0)
            continue
        tokens.append(token)
        if index == tokenizer.unk_token_id:
            kind, score = gguf.TokenType.UNKNOWN, 0.0
        elif index in special:
            kind, score = gguf.TokenType.CONTROL, 0.0
        elif index in added:
            kind, score = gguf.TokenType.USER_DEFINED, 0.0
        elif _BYTE_TOKEN.fullmatch(token):
            kind, score = gguf.TokenType.BYTE, 0.0
        else:
            kind, score = gguf.TokenType.NORMAL, -float(rank[token] + 1) if token in rank else unmerged
        types.append(kind)
        scores.append(score)
    if not any(kind == gguf.TokenType.BYTE for kind in types):
        raise ModelError(
            "the SentencePiece vocabulary has no byte tokens (<0x00>..<0xFF>): llama.cpp could not spell "
            f"characters outside it; use {CONVERTER} for this model"
        )
    return Vocabulary("llama", "default", tokens, types, scores=scores, add_space_prefix=add_space_prefix)


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts BOS in front of a text by itself (llama.cpp then does the same)."""
    if tokenizer.bos_token_id is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id


# llama.cpp's one way to strip whitespace after special tokens: a general.name containing "phi3" or
# "phi-3" makes it strip after every control / user-defined token but these (llama-vocab.cpp), and it
# then needs all four in the vocabulary.
_PHI3_NAMES = re.compile(r"phi-?3", re.IGNORECASE)
_PHI3_KEEP = ("<unk>", "<s>", "<|endoftext|>")
_PHI3_NEEDS = ("<unk>", "<s>", "<|endoftext|>", "</s>")


def gguf_name(name: str, tokenizer, vocab: Vocabulary, chat_template) -> str:
    """The general.name to write: ``name``, with or without "phi3" in it so that llama.cpp strips the
    whitespace after the chat template's special tokens exactly where training's tokenizer does
    (where the template puts whitespace after one); what llama.cpp cannot follow is refused."""
    sample = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "u"},
        {"role": "assistant", "content": "a"},
        {"role": "user", "content": "v"},
    ]
    rendered = None
    for messages in (sample, sample[1:]):  # the second for templates without a system role
        try:
            rendered = chat_template.render(messages, add_generation_prompt=True)
            break
        except Exception as exc:  # a template that refuses this conversation
            log.debug("GGUF name check: the chat template refused a sample conversation: %s", exc)
    if rendered is None:
        rendered = chat_template.chat_template or ""
    used = {
        t.content: t for t in tokenizer.added_tokens_decoder.values() if t.special and t.content in rendered
    }
    before = sorted(c for c, t in used.items() if t.lstrip and re.search(r"\s" + re.escape(c), rendered))
    if before:
        raise ModelError(
            f"the tokenizer strips the whitespace before {before}, which llama.cpp does not do for this "
            f"model, so it would tokenize the chat prompts differently; use {CONVERTER} for this model"
        )
    # the tokens the template puts whitespace after: there, stripping or not changes the ids
    followed = {c: t for c, t in used.items() if re.search(re.escape(c) + r"\s", rendered)}
    strips = {c for c, t in followed.items() if t.rstrip}
    plain = _PHI3_NAMES.sub(lambda m: m.group(0)[:-1].rstrip("-") + " " + m.group(0)[-1], name)
    if not strips:
        return plain  # llama.cpp must not strip: no "phi3" in the name
    by_phi3_rule = {c for c in followed if c not in _PHI3_KEEP}
    if strips != by_phi3_rule or not set(_PHI3_NEEDS) <= set(vocab.tokens):
        raise ModelError(
            f"the tokenizer strips the whitespace after {sorted(strips)} but not after "
            f"{sorted(set(followed) - strips)}: llama.cpp can strip only after all control tokens but "
            f"{', '.join(_PHI3_KEEP)} (its Phi-3 rule, which needs {', '.join(_PHI3_NEEDS)} in the vocabulary), "
            f"so it would tokenize the chat prompts differently; use {CONVERTER} for this model"
        )
    return name if _PHI3_NAMES.search(name) else f"{name} (phi3)"


def write_vocabulary(writer, vocab: Vocabulary, tokenizer, chat_template) -> None:
    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    if vocab.merges is not None:
        writer.add_token_merges(vocab.merges)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    if vocab.add_space_prefix is not None:
        writer.add_add_space_prefix(vocab.add_space_prefix)
    for token_id, add in (
        (tokenizer.bos_token_id, writer.add_bos_token_id),
        (tokenizer.eos_token_id, writer.add_eos_token_id),
        (tokenizer.unk_token_id, writer.add_unk_token_id),
        (tokenizer.pad_token_id, writer.add_pad_token_id),
    ):
        if token_id is not None and token_id < len(vocab.tokens):
            add(token_id)
    writer.add_add_bos_token(adds_bos(tokenizer))
    writer.add_add_eos_token(False)
    eot = single_token_id(tokenizer, chat_template.end_of_turn)
    if eot is not None and eot >= len(vocab.tokens):
        raise ModelError(
            f"the chat template's end of turn {chat_template.end_of_turn!r} is token {eot}, past the model's "
            f"{len(vocab.tokens)} embeddings: the model cannot have learnt to end its turns with it"
        )
    if eot is not None:
        writer.add_eot_token_id(eot)
    if chat_template.chat_template:
        writer.add_chat_template(chat_template.chat_template)
