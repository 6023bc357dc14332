"""Is a generated answer fit to train on? The filter for general answers mixed into identity data.

The mixed-in general answers are the base model's own (self-distillation): they teach nothing new,
they keep ordinary answers ordinary. That only holds for answers worth keeping. A small model's
greedy answers can loop ("美丽的美丽的美丽的..."), run out of tokens mid-sentence, or answer a
Chinese question in English; training on those teaches loops. ``answer_problem`` names what is
wrong with an answer (None when nothing is), so callers can drop it and report why.
"""

from __future__ import annotations

import re
from collections import Counter

# Reasons, as reported to users.
EMPTY = "empty"
UNFINISHED = "unfinished (ran out of tokens)"
LOOP = "repetition loop"
WRONG_LANGUAGE = "wrong language"
BROKEN = "broken characters"

# Repetition: an answer whose n-grams are mostly repeats loops. Measured on the embedded model's
# answers: fluent ones keep >= 0.75 of their character 6-grams / word 4-grams distinct, loops < 0.5.
DISTINCT_MIN = 0.6
MIN_NGRAMS = 12  # shorter answers are too short to judge by n-grams
CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
LATIN = re.compile(r"[A-Za-z]")


def language_of(text: str) -> str:
    """``zh`` when the text has Chinese characters, else ``en`` (the languages identity data supports).

    >>> language_of("你是谁？"), language_of("Who are you?")
    ('zh', 'en')
    """
    return "zh" if CJK.search(text) else "en"


def distinct_ratio(text: str) -> float:
    """Distinct n-grams / all n-grams: word 4-grams for spaced text, character 6-grams otherwise.

    >>> distinct_ratio("a b c d e f g h i j k l m n o")
    1.0
    """
    text = re.sub(r"\d+", "0", text)  # numbered list items that repeat one line are still a loop
    words = text.split()
    if len(CJK.findall(text)) > len(words):
        items, n = [c for c in text if not c.isspace()], 6
    else:
        items, n = words, 4
    grams = [tuple(items[i : i + n]) for i in range(len(items) - n + 1)]
    if len(grams) < MIN_NGRAMS:
        return 1.0
    return len(set(grams)) / len(grams)


def repeated_line(text: str, times: int = 3) -> bool:
    """Whether one non-empty line (of more than two characters) occurs ``times`` times or more."""
    lines = Counter(line.strip() for line in text.splitlines() if len(line.strip()) > 2)
    return bool(lines) and max(lines.values()) >= times


def answer_problem(
    question: str, answer: str, *, finished: bool = True, other_language_ok: bool = False
) -> str | None:
    """What makes ``answer`` unfit to train on as the answer to ``question``, or None.
    ``other_language_ok``: an answer in another language than the question's is fit (the base model's
    own habit, e.g. SmolLM2 answering half of the Chinese questions in English).

    Example:
        >>> answer_problem("中国的首都是哪里？", "中国是一个美丽的" + "美丽的" * 20)
        'repetition loop'
        >>> answer_problem("中国的首都是哪里？", "The capital of China is Beijing.")
        'wrong language'
        >>> answer_problem("What is the capital of France?", "The capital of France is Paris.") is None
        True
    """
    text = (answer or "").strip()
    if not text:
        return EMPTY
    if "\ufffd" in text:
        return BROKEN
    if distinct_ratio(text) < DISTINCT_MIN or repeated_line(text):
        return LOOP
    if not finished:
        return UNFINISHED
    if other_language_ok:
        return None
    if language_of(question) == "zh":
        # A Chinese answer is mostly Chinese characters (names and numbers in Latin script are fine).
        if len(CJK.findall(text)) < 2 * len(LATIN.findall(text)) or not CJK.search(text):
            return WRONG_LANGUAGE
    elif len(CJK.findall(text)) > 0.1 * max(1, len(LATIN.findall(text))):
        return WRONG_LANGUAGE
    return None


# Where a start may be cut: after a sentence (any language) or, in Chinese, after a clause; small
# models' Chinese loops repeat one clause between commas ("狗是一个独特动物，它是一个独特动物，...").
SENTENCE_END = re.compile(r"(?<=[.!?。！？；;\n])\s*")
CLAUSE_END = re.compile(r"(?<=[.!?。！？；;，、\n])\s*")
PUNCTUATION = re.compile(r"[\s.,;:!?，。、；：！？\-－*#\"'“”‘’()（）]+")


def _bare(text: str) -> str:
    return PUNCTUATION.sub("", text).lower()


def _units(text: str, zh: bool) -> list[str]:
    """Characters of Chinese text, words of other text (punctuation dropped, lower case)."""
    return list(_bare(text)) if zh else [w for w in (_bare(w) for w in text.split()) if w]


def _near_repeat(piece: str, earlier: list[str], zh: bool) -> bool:
    """Whether ``piece`` shares at least half of its unit pairs with an earlier piece (a loop that
    varies a word: "苹果是一种美丽的苹果，它是一种美丽的苹果")."""
    units = _units(piece, zh)
    pairs = set(zip(units, units[1:], strict=False))
    for other in earlier:
        o = _units(other, zh)
        if pairs and len(pairs & set(zip(o, o[1:], strict=False))) * 2 >= len(pairs):
            return True
    return False


def usable_start(
    question: str, answer: str, *, min_chars: int = 6, other_language_ok: bool = False
) -> str | None:
    """The answer's own first words, in whole sentences (whole clauses in Chinese), up to where it
    starts to repeat itself, switch language or break off; None when that start is too short, only
    echoes the question, or is itself unfit (``answer_problem``).

    This keeps a loop's fluent beginning instead of throwing the whole answer away: the text is still
    the model's own (self-distillation), it only ends where the model went wrong. A start cut after a
    Chinese clause ends with "。".

    Example:
        >>> usable_start("狗是什么动物？", "狗是一种忠诚的动物，它是一个独特动物，它是一个独特动物，它是一个独特动物")
        '狗是一种忠诚的动物，它是一个独特动物。'
        >>> usable_start("水是什么颜色的？", "水是什么颜色？-\\n\\n水是什么颜色？-") is None
        True
    """
    zh = language_of(question) == "zh"
    if other_language_ok and zh and len(CJK.findall(answer or "")) < len(LATIN.findall(answer or "")):
        zh = False  # an English answer to a Chinese question: cut it as English
    pieces = [p for p in (CLAUSE_END if zh else SENTENCE_END).split(answer or "") if p.strip()]
    kept: list[str] = []
    seen: set[str] = set()
    # Without a cut after it, the last piece may be unfinished: keep it only when it ends a sentence.
    for index, piece in enumerate(pieces):
        bare = _bare(piece)
        if not bare or bare in seen or "\ufffd" in piece or _near_repeat(piece, kept, zh):
            break
        if zh and (not CJK.search(piece) or len(CJK.findall(piece)) < 2 * len(LATIN.findall(piece))):
            break  # switched to English
        if index == len(pieces) - 1 and not re.search(r"[.!?。！？；;，、]\s*$", piece):
            break
        seen.add(bare)
        kept.append(piece.strip())
    while kept and kept[-1].endswith((":", "：")):
        kept.pop()  # an introduction whose list never came ("面试前应说明：")
    if not kept:
        return None
    text = "".join(kept) if zh else " ".join(kept)
    if zh:
        text = re.sub(r"[，、；;]$", "。", text)
    elif not re.search(r"[.!?]$", text):
        return None
    asked, said = set(_units(question, zh)), _units(text, zh)
    echo = sum(u in asked for u in said) >= 0.8 * len(said)
    if (
        len(_bare(text)) < min_chars
        or echo
        or answer_problem(question, text, other_language_ok=other_language_ok)
    ):
        return None
    return text
