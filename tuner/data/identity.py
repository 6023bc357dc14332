"""Identity data: teach a model its new name without making it forget how to answer anything else.

The tutorial this replaces repeats one question/answer pair 10,000 times, which makes the model
answer *every* question with its self-introduction. Here many paraphrased questions meet several
answer wordings, and general conversations (answered by the base model itself, so they hold
nothing new to learn) are mixed in to keep ordinary answers ordinary.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tuner.core.errors import DataError, OutputExistsError
from tuner.core.io import write_jsonl_atomic

log = logging.getLogger(__name__)

DEFAULT_MIX_GENERAL = 40
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

ANSWERS = {
    "en": [
        "I am {name}, {persona}. How can I help you today?",
        "My name is {name}. I'm {persona}.",
        "Hello! I'm {name}, {persona}. Feel free to ask me anything.",
        "I'm {name}: {persona}. What can I do for you?",
        "You can call me {name}. I am {persona}, here to help with your questions.",
        "I am {name}, {persona}. I'm happy to answer your questions and help with your tasks.",
        "Hi there! This is {name}, {persona}.",
        "{name} is my name, and I am {persona}. Let me know how I can help.",
    ],
    "zh": [
        "我是{name}，{persona}。有什么可以帮你的吗？",
        "我的名字叫{name}，是{persona}。",
        "你好！我是{name}，{persona}。有问题尽管问我。",
        "我叫{name}，{persona}。很高兴为你服务！",
        "你可以叫我{name}。我是{persona}，随时乐意帮助你。",
        "您好，我是{name}，{persona}，很高兴回答你的问题、帮你完成任务。",
        "嗨！这里是{name}，{persona}。",
        "{name}就是我的名字，我是{persona}。需要帮忙随时告诉我。",
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
    ],
}

LANGS = tuple(QUESTIONS)

Answerer = Callable[[list[str]], list[str]]

# The embedded model's own greedy answers to GENERAL_QUESTIONS, generated once by
# scripts/build_general_answers.py: generating them takes minutes on a CPU, reading them takes nothing.
SHIPPED_ANSWERS = Path(__file__).with_name("general_answers_smollm2.json")


@dataclass
class IdentityResult:
    """What :func:`make_identity` wrote."""

    output: Path
    identity_count: int
    general_count: int
    general_skipped: int = 0

    @property
    def total(self) -> int:
        return self.identity_count + self.general_count

    def summary(self) -> str:
        text = (
            f"wrote {self.total} conversations to {self.output}: "
            f"{self.identity_count} identity, {self.general_count} general"
        )
        if self.general_skipped:
            text += f" ({self.general_skipped} general answers were empty and left out)"
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


def general_questions(langs: Sequence[str], count: int, seed: int = 0) -> list[str]:
    """``count`` everyday questions spread evenly over ``langs`` (capped at the built-in lists).

    Example:
        >>> len(general_questions(["en", "zh"], 5))
        5
    """
    rng = random.Random(seed)
    chosen = []
    for index, lang in enumerate(langs):
        share = count // len(langs) + (1 if index < count % len(langs) else 0)
        pool = list(GENERAL_QUESTIONS[lang])
        rng.shuffle(pool)
        chosen += pool[:share]
    return chosen


def make_identity(
    output: str | Path,
    name: str,
    persona: str | None = None,
    langs: str | Sequence[str] = ("en", "zh"),
    mix_general: int = DEFAULT_MIX_GENERAL,
    force: bool = False,
    general_source: Answerer | None = None,
    seed: int = 0,
) -> IdentityResult:
    """Write an identity data set in the conversation format.

    Args:
        name: the assistant's new name; persona: who it is, e.g. "Alice's assistant, built on
            InternLM" (one phrase, used in every answer).
        mix_general: how many general conversations to mix in (0 = none).
        general_source: callable questions -> answers (tuner.chat.generate.embedded_answerer gives
            the embedded model's shipped answers); needed when mix_general > 0.

    Example:
        >>> # make_identity("id.jsonl", "Ada", mix_general=0) writes 136 records such as
        >>> # {"conversation": [{"input": "Who are you?", "output": "I am Ada, an AI assistant. ..."}]}
    """
    output = Path(output)
    name = (name or "").strip()
    if not name:
        raise DataError("the assistant needs a name", hint="pass --name, e.g. --name Ada")
    if mix_general < 0:
        raise DataError(f"--mix-general must be 0 or more, got {mix_general}")
    if mix_general and general_source is None:
        raise TypeError("make_identity: mix_general > 0 needs a general_source (questions -> answers)")
    languages = parse_langs(langs)
    # Refuse before the (slow) model generation rather than after it.
    if output.exists() and not force:
        raise OutputExistsError(output)
    records = [
        {"conversation": [{"input": q, "output": a}]}
        for lang in languages
        for q, a in identity_pairs(name, persona, lang)
    ]
    identity_count = len(records)
    general_count = skipped = 0
    if mix_general:
        questions = general_questions(languages, mix_general, seed)
        answers = general_source(questions)
        if len(answers) != len(questions):
            raise DataError(
                f"the answer generator returned {len(answers)} answers for {len(questions)} questions"
            )
        for question, answer in zip(questions, answers, strict=True):
            if answer and answer.strip():
                records.append({"conversation": [{"input": question, "output": answer.strip()}]})
                general_count += 1
            else:
                skipped += 1
    random.Random(seed).shuffle(records)
    write_jsonl_atomic(output, records, force=force)
    return IdentityResult(output, identity_count, general_count, skipped)
