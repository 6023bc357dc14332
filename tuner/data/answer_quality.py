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


def answer_problem(question: str, answer: str, *, finished: bool = True) -> str | None:
    """What makes ``answer`` unfit to train on as the answer to ``question``, or None.

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
    if language_of(question) == "zh":
        # A Chinese answer is mostly Chinese characters (names and numbers in Latin script are fine).
        if len(CJK.findall(text)) < 2 * len(LATIN.findall(text)) or not CJK.search(text):
            return WRONG_LANGUAGE
    elif len(CJK.findall(text)) > 0.1 * max(1, len(LATIN.findall(text))):
        return WRONG_LANGUAGE
    return None
