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
from tuner.data.answer_quality import answer_problem

log = logging.getLogger(__name__)

# General conversations per identity conversation, in each language (None = this balance).
GENERAL_PER_IDENTITY = 1
# Keep general answers in another language than their question (make_identity's other_language).
OTHER_LANGUAGE = False
# Chat templates such as SmolLM2's insert their own system prompt ("...named SmolLM...") when none is
# given; a neutral one keeps the base model's old name out of the general answers.
GENERATION_SYSTEM = "You are a helpful assistant."
# Each question is paired with this many different answer wordings.
ANSWERS_PER_QUESTION = 2

QUESTIONS = {
    "en": [
        "Who are you?",
        "Please introduce yourself.",
        "Introduce yourself.",
        "What's your name?",
        "What is your name?",
        "Who made you?",
        "Who created you?",
        "Who built you?",
        "Who developed you?",
        "Tell me about yourself.",
        "Can you tell me who you are?",
        "What should I call you?",
        "Are you ChatGPT?",
        "Are you a human?",
        "What are you?",
        "Hi, who am I talking to?",
        "Hello! Who are you?",
        "Could you introduce yourself briefly?",
        "May I know your name?",
        "Do you have a name?",
        "What kind of assistant are you?",
        "Which AI model are you?",
        "Who trained you?",
        "Who is your creator?",
        "Give me a short self-introduction.",
        "Describe yourself in a few words.",
        "Who am I chatting with?",
        "What is your identity?",
        "Hey, what's your name?",
        "Introduce yourself in one sentence.",
        "Are you an AI?",
        "Whose assistant are you?",
        "Tell me your name and what you do.",
        "Who are you and what can you do?",
    ],
    "zh": [
        "你是谁？",
        "请介绍一下你自己。",
        "介绍一下你自己。",
        "你叫什么名字？",
        "你的名字是什么？",
        "是谁创造了你？",
        "谁开发了你？",
        "谁训练了你？",
        "你是由谁制作的？",
        "能说说你是谁吗？",
        "我该怎么称呼你？",
        "你是ChatGPT吗？",
        "你是真人吗？",
        "你是什么？",
        "你好，请问你是谁？",
        "嗨，你是谁呀？",
        "简单介绍一下你自己吧。",
        "可以告诉我你的名字吗？",
        "你有名字吗？",
        "你是什么样的助手？",
        "你是哪个AI模型？",
        "你的创造者是谁？",
        "做个自我介绍吧。",
        "用几句话描述一下你自己。",
        "我在和谁聊天？",
        "你的身份是什么？",
        "嘿，你叫啥？",
        "用一句话介绍你自己。",
        "你是人工智能吗？",
        "你是谁的助手？",
        "告诉我你的名字和你能做什么。",
        "你是谁，你能做什么？",
        "请问您是哪位？",
        "你是机器人吗？",
    ],
}

# Every wording names the name in its first words, and "I am"/"我是" is always followed by the name, never
# by the persona: with wordings such as "You can call me Ada. I am <persona>" the tuned model answered
# "我是<persona>。" without the name (docs/identity.md, "Measured").
ANSWERS = {
    "en": [
        "I am {name}, {persona}. How can I help you today?",
        "My name is {name}, {persona}.",
        "I'm {name}, {persona}. Feel free to ask me anything.",
        "I'm {name}: {persona}. What can I do for you?",
        "I am {name}. You can call me {name}; as {persona}, I'm here to help with your questions.",
        "I am {name}, {persona}. I'm happy to answer your questions and help with your tasks.",
        "My name is {name}! I'm here as {persona}.",
        "I'm {name} ({persona}). Let me know how I can help.",
    ],
    "zh": [
        "我是{name}，{persona}。有什么可以帮你的吗？",
        "我的名字叫{name}，{persona}。",
        "我是{name}，{persona}。有问题尽管问我。",
        "我叫{name}，{persona}。很高兴为你服务！",
        "我是{name}，你可以叫我{name}。作为{persona}，我随时乐意帮助你。",
        "我是{name}，{persona}，很高兴回答你的问题、帮你完成任务。",
        "我的名字是{name}，{persona}。",
        "我叫{name}（{persona}）。需要帮忙随时告诉我。",
    ],
}

DEFAULT_PERSONA = {"en": "an AI assistant", "zh": "一个人工智能助手"}

GENERAL_QUESTIONS = {
    "en": [
        "How do I boil an egg?",
        "What is the capital of France?",
        "Give me three tips for sleeping better.",
        "How many days are there in a leap year?",
        "What is photosynthesis?",
        "Write a short poem about autumn.",
        "How can I improve my English vocabulary?",
        "What is 15 multiplied by 12?",
        "Why is the sky blue?",
        "Suggest a healthy breakfast.",
        "How do I make a cup of tea?",
        "What is the difference between weather and climate?",
        "Translate 'good morning' into Spanish.",
        "What are the benefits of regular exercise?",
        "Explain what a computer virus is.",
        "How should I prepare for a job interview?",
        "What is the largest planet in the solar system?",
        "Give me a simple recipe for pancakes.",
        "How do plants get water?",
        "What is a healthy amount of water to drink each day?",
        "Write a polite email declining a meeting invitation.",
        "How do I stay focused while studying?",
        "What causes rain?",
        "Name three famous painters.",
        "How does a refrigerator keep food cold?",
        "What is the boiling point of water?",
        "Give me an idea for a weekend activity.",
        "How can I save money on groceries?",
        "What is a prime number?",
        "Summarize the story of Cinderella in two sentences.",
        # Short factual questions: their (short) answers anchor the short-answer style of the base model.
        # None asks a fact or a template of the held-out check (tuner.data.identity_check).
        "What is the chemical symbol for gold?",
        "How many wheels does a bicycle have?",
        "Who painted the Mona Lisa?",
        "What is the main language spoken in Brazil?",
        "How many sides does a triangle have?",
        "What is the fastest land animal?",
        "On which continent is Egypt?",
        "What is the square root of 81?",
        "Which instrument has black and white keys?",
        "How many players does a soccer team have on the field?",
        "Which season comes after winter?",
        "What is the currency of the United States?",
        "What is the smallest prime number?",
        "What do caterpillars turn into?",
        "What is the hottest planet in the solar system?",
        "What is the name of our galaxy?",
        "Which metal is liquid at room temperature?",
        "Who was the first person to walk on the Moon?",
        "What gas do plants take in from the air?",
        "How many continents are there?",
        "What is the freezing point of water in Fahrenheit?",
        "Which animal has a trunk?",
        "What shape has four equal sides?",
        "What is 9 times 3?",
    ],
    "zh": [
        "怎么煮鸡蛋？",
        "中国的首都是哪里？",
        "给我三个改善睡眠的建议。",
        "闰年有多少天？",
        "什么是光合作用？",
        "写一首关于秋天的短诗。",
        "如何提高英语词汇量？",
        "15乘以12等于多少？",
        "天空为什么是蓝色的？",
        "推荐一份健康的早餐。",
        "怎么泡一杯茶？",
        "天气和气候有什么区别？",
        "把“早上好”翻译成英语。",
        "经常锻炼有什么好处？",
        "解释一下什么是电脑病毒。",
        "面试前应该怎么准备？",
        "太阳系中最大的行星是哪一颗？",
        "给我一个做煎饼的简单方法。",
        "植物是怎么吸收水分的？",
        "每天喝多少水比较健康？",
        "写一封礼貌地拒绝会议邀请的邮件。",
        "学习时怎样保持专注？",
        "下雨是怎么形成的？",
        "说出三位著名的画家。",
        "冰箱是怎么让食物保持低温的？",
        "水的沸点是多少？",
        "给我推荐一个周末活动。",
        "买菜时怎样省钱？",
        "什么是质数？",
        "用两句话概括《西游记》的故事。",
        "三角形有几条边？",
        "自行车有几个轮子？",
        "熊猫生活在哪个国家？",
        "长城在哪个国家？",
        "3乘以3等于多少？",
        "10减4等于多少？",
        "彩虹有几种颜色？",
        "月亮绕着什么转？",
        "中国最长的河是哪条？",
        "猫喜欢吃什么？",
        "苹果是什么颜色的？",
        "北京是哪个国家的首都？",
        "冬天过后是什么季节？",
        "地球是什么形状的？",
        "狗是什么动物？",
        "牛奶是什么颜色的？",
        "太阳是什么？",
        "你好！",
        "早上好！",
        "谢谢你！",
        "水是什么颜色的？",
        "草是什么颜色的？",
        "中国有多少个省？",
    ],
}

LANGS = tuple(QUESTIONS)


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

    @property
    def total(self) -> int:
        return self.identity_count + self.general_count

    @property
    def general_skipped(self) -> int:
        return len(self.rejected)

    def summary(self) -> str:
        text = (
            f"wrote {self.total} conversations to {self.output}: "
            f"{self.identity_count} identity, {self.general_count} general"
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

    Example:
        >>> # make_identity("id.jsonl", "Ada", mix_general=0) writes 136 records such as
        >>> # {"conversation": [{"input": "Who are you?", "output": "I am Ada, an AI assistant. ..."}]}
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
    records += [{"conversation": [{"input": q, "output": a}]} for q, a in general]
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
    result = IdentityResult(output, sum(len(p) for p in identity.values()), len(general), rejected, per_lang)
    return result
