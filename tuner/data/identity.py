"""Identity data: teach a model its new name without making it forget how to answer anything else.

The tutorial this replaces repeats one question/answer pair 10,000 times, which makes the model
answer *every* question with its self-introduction. Here many paraphrased questions meet several
answer wordings, and general conversations (answered by the base model itself, so they hold
nothing new to learn) are mixed in to keep ordinary answers ordinary. Each language gets at least
as many general conversations as identity ones, or the model learns "a Chinese question -> my name".
General answers unfit to train on (loops, unfinished, wrong language: tuner.data.answer_quality)
are left out and reported.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tuner.core.errors import DataError, OutputExistsError
from tuner.core.io import write_jsonl_atomic
from tuner.data.anchors import ANCHOR, KL_ONLY
from tuner.data.answer_quality import answer_problem
from tuner.data.identity_questions import ANSWERS, DEFAULT_PERSONA, GENERAL_QUESTIONS, LANGS, QUESTIONS
from tuner.data.probe_questions import PROBE_QUESTIONS

log = logging.getLogger(__name__)

# General conversations per identity conversation, in each language (None = this balance).
GENERAL_PER_IDENTITY = 1
# Keep general answers in another language than their question (make_identity's other_language).
OTHER_LANGUAGE = False
# KL probes per language that make-identity and the app's identity builder write (make_identity's
# kl_probes; at most the bank's 160): the base model's openings to self-written everyday questions, which
# hold its distribution on many more prompts than the general conversations cover (docs/identity.md,
# "KL probes"). All of them: the SmolLM2 identity preset was measured with 160.
KL_PROBES = 160
# Mark the general conversations as anchors (make_identity's general_anchors).
GENERAL_ANCHORS = True
# Chat templates such as SmolLM2's insert their own system prompt ("...named SmolLM...") when none is
# given; a neutral one keeps the base model's old name out of the general answers.
GENERATION_SYSTEM = "You are a helpful assistant."
# Each question is paired with this many different answer wordings.
ANSWERS_PER_QUESTION = 2


@dataclass(frozen=True)
class GeneralAnswer:
    """A generated general answer and, when it is unfit to train on, why (a tuner.data.answer_quality
    reason such as "unfinished (ran out of tokens)"); None when it is fit."""

    text: str
    problem: str | None = None


# questions -> answers: plain strings (finished answers) or GeneralAnswer.
Answerer = Callable[[list[str]], list]

# The embedded model's own greedy answers to GENERAL_QUESTIONS, generated once by
# scripts/build_general_answers.py: generating them takes minutes on a CPU, reading them takes nothing.
SHIPPED_ANSWERS = Path(__file__).with_name("general_answers_smollm2.json")
# The embedded model's greedy openings to the KL probe questions (tuner.data.probe_questions), generated
# once by scripts/build_probe_answers.py.
SHIPPED_PROBE_ANSWERS = Path(__file__).with_name("probe_answers_smollm2.json")


@dataclass
class IdentityResult:
    """What :func:`make_identity` wrote."""

    output: Path
    identity_count: int
    general_count: int
    # general questions whose answers were left out: question -> why (tuner.data.answer_quality)
    rejected: dict[str, str] = field(default_factory=dict)
    # per language: (identity conversations, general conversations, distinct general answers)
    per_lang: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    # KL probes written (tuner.data.anchors: they train only through anchor_kl_weight's KL term)
    probe_count: int = 0

    @property
    def total(self) -> int:
        return self.identity_count + self.general_count + self.probe_count

    @property
    def general_skipped(self) -> int:
        return len(self.rejected)

    def summary(self) -> str:
        text = (
            f"wrote {self.total} conversations to {self.output}: "
            f"{self.identity_count} identity, {self.general_count} general"
            + (f", {self.probe_count} KL probes" if self.probe_count else "")
        )
        if self.general_count:
            text += (
                " ("
                + "; ".join(
                    f"{lang}: {ident} identity, {general} general from {distinct} answers"
                    for lang, (ident, general, distinct) in self.per_lang.items()
                )
                + ")"
            )
        if self.rejected:
            reasons = Counter(self.rejected.values())
            text += f"\n{len(self.rejected)} general answers left out: " + ", ".join(
                f"{n} {why}" for why, n in reasons.most_common()
            )
        mixing = bool(self.general_count or self.rejected)
        for lang, (ident, general, _distinct) in self.per_lang.items():
            if mixing and ident and not general:
                text += (
                    f"\nwarning: no usable general answer in {lang}: the model may answer every {lang} "
                    "question with its name; add general conversations in that language"
                )
        return text


def parse_langs(langs: str | Sequence[str]) -> tuple[str, ...]:
    """ "en,zh" or ["en", "zh"] -> ("en", "zh"); unknown languages raise DataError."""
    items = langs.split(",") if isinstance(langs, str) else list(langs)
    names = tuple(dict.fromkeys(item.strip().lower() for item in items if item.strip()))
    unknown = [name for name in names if name not in LANGS]
    if unknown or not names:
        raise DataError(
            f"unsupported language(s): {', '.join(unknown) or '(none)'}",
            hint="supported: " + ", ".join(LANGS),
        )
    return names


def identity_pairs(name: str, persona: str | None, lang: str) -> list[tuple[str, str]]:
    """Every identity question of ``lang`` with ANSWERS_PER_QUESTION different answer wordings.

    Example:
        >>> identity_pairs("Ada", "Bob's assistant", "en")[0]
        ('Who are you?', "I am Ada, Bob's assistant. How can I help you today?")
    """
    persona_text = (persona or DEFAULT_PERSONA[lang]).strip().rstrip(".。!！")
    answers = [template.format(name=name, persona=persona_text) for template in ANSWERS[lang]]
    pairs = []
    for index, question in enumerate(QUESTIONS[lang]):
        # Rotate through the wordings so that each is used about equally often.
        start = index * ANSWERS_PER_QUESTION
        for k in range(ANSWERS_PER_QUESTION):
            pairs.append((question, answers[(start + k) % len(answers)]))
    return pairs


def general_mix(
    langs: Sequence[str], answers: dict[str, str], counts: dict[str, int], seed: int = 0
) -> list[tuple[str, str]]:
    """``counts[lang]`` general conversations per language, drawn from the usable ``answers``
    (question -> answer) of that language: each answer once before any repeats.

    Example:
        >>> general_mix(["en"], {"What is 1+1?": "2."}, {"en": 3})
        [('What is 1+1?', '2.'), ('What is 1+1?', '2.'), ('What is 1+1?', '2.')]
    """
    rng = random.Random(seed)
    chosen = []
    for lang in langs:
        pool = [(q, answers[q]) for q in GENERAL_QUESTIONS[lang] if q in answers]
        rng.shuffle(pool)
        if pool:
            chosen += [pool[i % len(pool)] for i in range(counts.get(lang, 0))]
    return chosen


def make_identity(
    output: str | Path,
    name: str,
    persona: str | None = None,
    langs: str | Sequence[str] = ("en", "zh"),
    mix_general: int | None = None,
    force: bool = False,
    general_source: Answerer | None = None,
    seed: int = 0,
    other_language: bool = OTHER_LANGUAGE,
    general_per_identity: int = GENERAL_PER_IDENTITY,
    kl_probes: int = 0,
    probe_source: Answerer | None = None,
    general_anchors: bool = GENERAL_ANCHORS,
) -> IdentityResult:
    """Write an identity data set in the conversation format.

    Args:
        name: the assistant's new name; persona: who it is, e.g. "Alice's assistant, built on
            InternLM" (one phrase, used in every answer).
        mix_general: how many general conversations to mix in, spread evenly over the languages;
            None (the default) = as many in each language as it has identity conversations; 0 = none.
        general_source: callable questions -> answers, the base model's own answers
            (tuner.chat.generate.general_answerer); needed unless mix_general is 0. Every built-in
            general question of the chosen languages is asked; unfit answers are left out
            (IdentityResult.rejected says why) and the usable ones are repeated to reach the mix.
        general_per_identity: with mix_general None, general conversations per identity conversation
            in each language.
        other_language: keep general answers given in another language than their question (the
            base model's habit: SmolLM2 answers about half of the Chinese questions in English); they
            anchor that habit, so the tuned model does not drift into broken Chinese where the base
            answered in English.
        kl_probes: KL probes per language (at most the 160 of tuner.data.probe_questions): each a
            self-written everyday question with the opening of the base model's answer, marked
            ``"anchor": "kl"``; they train only through the KL term to the base model
            (``anchor_kl_weight`` > 0; without it training leaves them out).
        probe_source: callable questions -> openings (tuner.chat.generate.probe_answerer); needed
            when kl_probes > 0.
        general_anchors: mark the general conversations ``"anchor": true`` (with anchor_kl_weight
            they then train through the KL term as well); False: they are plain conversations, trained
            as text at any weight, and only the probes hold the base model's distribution.

    Example:
        >>> # make_identity("id.jsonl", "Ada", mix_general=0) writes 136 records such as
        >>> # {"conversation": [{"input": "Who are you?", "output": "I am Ada, an AI assistant. ..."}]}
        >>> # and each general conversation is marked {"conversation": [...], "anchor": true}
    """
    output = Path(output)
    name = (name or "").strip()
    if not name:
        raise DataError("the assistant needs a name", hint="pass --name, e.g. --name Ada")
    if mix_general is not None and mix_general < 0:
        raise DataError(f"--mix-general must be 0 or more, got {mix_general}")
    if mix_general != 0 and general_source is None:
        raise TypeError(
            "make_identity: mixing general conversations needs a general_source (questions -> answers)"
        )
    if kl_probes < 0:
        raise DataError(f"--kl-probes must be 0 or more, got {kl_probes}")
    if kl_probes and probe_source is None:
        raise TypeError("make_identity: KL probes need a probe_source (questions -> openings)")
    languages = parse_langs(langs)
    # Refuse before the (slow) model generation rather than after it.
    if output.exists() and not force:
        raise OutputExistsError(output)
    identity = {lang: identity_pairs(name, persona, lang) for lang in languages}
    records = [{"conversation": [{"input": q, "output": a}]} for lang in languages for q, a in identity[lang]]
    if mix_general is None:
        counts = {lang: general_per_identity * len(identity[lang]) for lang in languages}
    else:
        counts = {
            lang: mix_general // len(languages) + (1 if i < mix_general % len(languages) else 0)
            for i, lang in enumerate(languages)
        }
    usable: dict[str, str] = {}
    rejected: dict[str, str] = {}
    if any(counts.values()):
        questions = [q for lang in languages for q in GENERAL_QUESTIONS[lang]]
        answers = general_source(questions)
        if len(answers) != len(questions):
            raise DataError(
                f"the answer generator returned {len(answers)} answers for {len(questions)} questions"
            )
        for question, answer in zip(questions, answers, strict=True):
            given = answer if isinstance(answer, GeneralAnswer) else GeneralAnswer(answer or "")
            problem = given.problem or answer_problem(question, given.text, other_language_ok=other_language)
            if problem:
                rejected[question] = problem
            else:
                usable[question] = given.text.strip()
    general = general_mix(languages, usable, counts, seed)
    # Marked as anchors (tuner.data.anchors): the base model's own answers, which anchor_kl_weight
    # trains as a distribution to keep rather than as text to copy.
    mark = {ANCHOR: True} if general_anchors else {}
    records += [{"conversation": [{"input": q, "output": a}], **mark} for q, a in general]
    probes = probe_pairs(languages, kl_probes, probe_source) if kl_probes else []
    records += [{"conversation": [{"input": q, "output": a}], ANCHOR: KL_ONLY} for q, a in probes]
    per_lang = {
        lang: (
            len(identity[lang]),
            sum(q in GENERAL_QUESTIONS[lang] for q, _ in general),
            sum(q in usable for q in GENERAL_QUESTIONS[lang]),
        )
        for lang in languages
    }
    random.Random(seed).shuffle(records)
    write_jsonl_atomic(output, records, force=force)
    return IdentityResult(
        output, sum(len(p) for p in identity.values()), len(general), rejected, per_lang, len(probes)
    )


def probe_pairs(languages: Sequence[str], per_lang: int, probe_source: Answerer) -> list[tuple[str, str]]:
    """(question, the base model's opening) for the first ``per_lang`` probe questions of each language;
    a question whose opening came back empty is skipped."""
    questions = [q for lang in languages for q in PROBE_QUESTIONS[lang][:per_lang]]
    openings = probe_source(questions)
    if len(openings) != len(questions):
        raise DataError(
            f"the probe generator returned {len(openings)} openings for {len(questions)} questions"
        )
    texts = [(o.text if isinstance(o, GeneralAnswer) else o or "").strip() for o in openings]
    return [(q, text) for q, text in zip(questions, texts, strict=True) if text]
