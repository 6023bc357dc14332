"""Task metrics of generated answers against reference answers: exact match, ROUGE-L and BLEU.

Scores are on a 0-100 scale. Exact match compares answers after Unicode normalisation (NFKC),
case folding and collapsing whitespace. ROUGE-L is rouge-score's F-measure of the longest common
subsequence, averaged over the samples; BLEU is sacrebleu's corpus BLEU (one score for the whole
set, as papers report it). Chinese, Japanese and Korean text is compared per character: rouge-score's
own tokenizer drops every non-Latin character (a Chinese answer would score 0) and BLEU's 13a
tokenizer keeps a Chinese sentence as one word, so ROUGE always uses a tokenizer of ours (words, and
each CJK character as a word) and BLEU sacrebleu's ``zh`` tokenizer when the references hold CJK text.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

METRICS = ("exact", "rouge", "bleu")
# The name each metric's score has in results and tables.
SCORE_NAMES = {"exact": "exact_match", "rouge": "rougeL", "bleu": "bleu"}
LABELS = {"exact_match": "exact match", "rougeL": "ROUGE-L", "bleu": "BLEU"}

# CJK ideographs, kana and Hangul: characters that are words (or syllables) on their own.
CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\U00020000-\U0002fa1f]")
WORD = re.compile(rf"{CJK.pattern}|[^\W_]+", re.UNICODE)


def parse_metrics(text: str | Sequence[str]) -> list[str]:
    """``"exact,rouge"`` -> ``["exact", "rouge"]``; unknown names raise ValueError naming the known ones."""
    names = [n.strip().lower() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    unknown = [n for n in names if n not in METRICS]
    if unknown or not names:
        raise ValueError(f"unknown metric {', '.join(unknown) or '(none)'}; choose from {', '.join(METRICS)}")
    return list(dict.fromkeys(names))


def normalise(text: str) -> str:
    """The form exact match compares.

    >>> normalise("  Paris\\n is  NICE ")
    'paris is nice'
    """
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def has_cjk(texts: Sequence[str]) -> bool:
    return any(CJK.search(t) for t in texts)


class CharTokenizer:
    """rouge-score's tokenizer interface: lower-cased words, and each CJK character as a word.

    >>> CharTokenizer().tokenize("我是 Tuna 助手!")
    ['我', '是', 'tuna', '助', '手']
    """

    def tokenize(self, text: str) -> list[str]:
        return WORD.findall(unicodedata.normalize("NFKC", text).lower())


def exact_scores(answers: Sequence[str], references: Sequence[str]) -> list[float]:
    return [100.0 * (normalise(a) == normalise(r)) for a, r in zip(answers, references, strict=True)]


def rouge_scores(answers: Sequence[str], references: Sequence[str]) -> list[float]:
    """ROUGE-L F-measure of each answer, 0-100 (per character for CJK text)."""
    from rouge_score import rouge_scorer

    # For ASCII text our tokenizer gives rouge-score's own tokens (lower-cased runs of letters and
    # digits); it also keeps accented, Cyrillic, ... words, which rouge-score's would drop.
    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=CharTokenizer())
    return [
        100.0 * scorer.score(reference, answer)["rougeL"].fmeasure
        for answer, reference in zip(answers, references, strict=True)
    ]


def bleu_tokenizer(references: Sequence[str]) -> str:
    return "zh" if has_cjk(references) else "13a"


def corpus_bleu(answers: Sequence[str], references: Sequence[str]) -> float:
    import sacrebleu

    return sacrebleu.corpus_bleu(list(answers), [list(references)], tokenize=bleu_tokenizer(references)).score


def sentence_bleu(answer: str, reference: str, tokenize: str) -> float:
    """One sample's BLEU (smoothed, as sacrebleu does for single sentences): for the per-sample file."""
    import sacrebleu

    return sacrebleu.sentence_bleu(answer, [reference], tokenize=tokenize).score


def score(
    answers: Sequence[str], references: Sequence[str], metrics: Sequence[str]
) -> tuple[dict, list[dict]]:
    """(corpus scores, per-sample scores) of ``answers`` against ``references``, for ``metrics``.

    Corpus exact match and ROUGE-L are the means of the per-sample scores; corpus BLEU is computed on
    the whole set (not the mean of sentence BLEU).

    >>> score(["Paris"], ["paris"], ["exact"])
    ({'exact_match': 100.0}, [{'exact_match': 100.0}])
    """
    per_sample: list[dict] = [{} for _ in answers]
    corpus: dict = {}
    n = max(len(answers), 1)
    if "exact" in metrics:
        values = exact_scores(answers, references)
        corpus["exact_match"] = sum(values) / n
        for row, value in zip(per_sample, values, strict=True):
            row["exact_match"] = value
    if "rouge" in metrics:
        values = rouge_scores(answers, references)
        corpus["rougeL"] = sum(values) / n
        for row, value in zip(per_sample, values, strict=True):
            row["rougeL"] = value
    if "bleu" in metrics:
        corpus["bleu"] = corpus_bleu(answers, references)
        tokenize = bleu_tokenizer(references)
        for row, answer, reference in zip(per_sample, answers, references, strict=True):
            row["bleu"] = sentence_bleu(answer, reference, tokenize)
    return corpus, per_sample
