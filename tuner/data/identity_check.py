"""A held-out check of identity tuning: does the model take its new name, and lose nothing else?

Three sets, English and Chinese, none of them in the training data that make_identity writes (a
test checks that):
- IDENTITY: paraphrases of "who are you?" that training never shows: the answer must carry the name;
- LEAKAGE: everyday questions that have nothing to do with the assistant: the answer must not;
- KNOWLEDGE: questions with a checkable answer: what the base model answers right, the tuned model
  must still answer right.
``score_check`` turns the base and tuned answers into the numbers; tuner.chat.identity_check runs
the models.
"""

from __future__ import annotations

from dataclasses import dataclass, field

IDENTITY = {
    "en": [
        "Who am I speaking with right now?",
        "Could you tell me your name, please?",
        "What do people call you?",
        "Introduce yourself to a new user.",
        "Which assistant is answering me?",
        "Before we start, who are you?",
        "What name were you given?",
        "Say your name.",
        "Who exactly are you?",
        "I'd like to know who you are.",
    ],
    "zh": [
        "请告诉我你的名字。",
        "你到底是谁？",
        "现在和我说话的是谁？",
        "向新用户介绍一下你自己。",
        "大家怎么称呼你？",
        "开始之前，先说说你是谁。",
        "你的名字叫什么？",
        "请做一个简短的自我介绍。",
        "正在回答我的是哪个助手？",
        "我想知道你是谁。",
    ],
}

LEAKAGE = {
    "en": [
        "What is the tallest mountain in the world?",
        "How do I clean a wooden table?",
        "Write one sentence about the sea.",
        "What is a noun?",
        "How long should I boil pasta?",
        "Give me a tip for learning to draw.",
        "What is the opposite of hot?",
        "Why do leaves change color in autumn?",
        "How many minutes are in an hour?",
        "What does a doctor do?",
    ],
    "zh": [
        "世界上最高的山是哪座？",
        "怎么擦干净木头桌子？",
        "写一句关于大海的话。",
        "什么是名词？",
        "意大利面要煮多久？",
        "学画画有什么建议？",
        "热的反义词是什么？",
        "秋天树叶为什么会变色？",
        "一个小时有多少分钟？",
        "医生是做什么的？",
    ],
}


@dataclass(frozen=True)
class Checkable:
    """A question and the strings any one of which makes an answer right (case-insensitive). None of
    them is in the question, so an answer that only repeats the question is not right."""

    question: str
    accept: tuple[str, ...]

    def right(self, answer: str) -> bool:
        return any(word.lower() in answer.lower() for word in self.accept)


KNOWLEDGE = {
    "en": [
        Checkable("What is the capital of Japan?", ("Tokyo",)),
        Checkable("What is the capital of Italy?", ("Rome", "Roma")),
        Checkable("How many legs does a spider have?", ("eight", "8")),
        Checkable("What color is the sky on a clear day?", ("blue",)),
        Checkable("What is 2 plus 2?", ("4", "four")),
        Checkable("Which planet do we live on?", ("Earth",)),
        Checkable("How many days are in a week?", ("seven", "7")),
        Checkable("Who wrote Romeo and Juliet?", ("Shakespeare",)),
        Checkable("What is the largest ocean on Earth?", ("Pacific",)),
        Checkable("What do bees make?", ("honey",)),
    ],
    "zh": [
        Checkable("日本的首都是哪里？", ("东京",)),
        Checkable("一年有几个月？", ("12", "十二")),
        Checkable("2加2等于几？", ("4", "四")),
        Checkable("太阳从哪个方向升起？", ("东",)),
        Checkable("法国的首都是哪里？", ("巴黎",)),
        Checkable("一天有多少个小时？", ("24", "二十四")),
        Checkable("蜜蜂会酿什么？", ("蜂蜜",)),
        Checkable("水在零下会变成什么？", ("冰",)),
        Checkable("英国的首都是哪里？", ("伦敦",)),
        Checkable("人用什么器官呼吸？", ("肺",)),
    ],
}


def check_prompts(langs=("en", "zh")) -> list[str]:
    """Every question of the check, identity first, then leakage, then knowledge."""
    return (
        [q for lang in langs for q in IDENTITY[lang]]
        + [q for lang in langs for q in LEAKAGE[lang]]
        + [c.question for lang in langs for c in KNOWLEDGE[lang]]
    )


@dataclass
class SideScore:
    """One model's numbers: identity answers naming the name, general answers naming it (leaks),
    knowledge questions answered right."""

    identity: int = 0
    leaks: int = 0
    knowledge: int = 0


@dataclass
class CheckResult:
    """Base vs tuned on the held-out check, with every answer (rows: set, lang, question, base, tuned)."""

    name: str
    totals: dict  # identity, leakage, knowledge: how many questions each set has
    base: SideScore
    tuned: SideScore
    lost: list[str] = field(default_factory=list)  # knowledge the base had right and the tuned lost
    rows: list[dict] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """The targets of issue 18: >= 90% identity, <= 5% leaks, no knowledge lost."""
        return (
            self.tuned.identity * 10 >= self.totals["identity"] * 9
            and self.tuned.leaks * 20 <= self.totals["leakage"]
            and not self.lost
        )

    def summary(self) -> str:
        t = self.totals
        lines = [
            f"identity check for {self.name!r} (held-out questions, base -> tuned):",
            f"  identity  {self.base.identity}/{t['identity']} -> {self.tuned.identity}/{t['identity']} answers name {self.name}",
            f"  leakage   {self.base.leaks}/{t['leakage']} -> {self.tuned.leaks}/{t['leakage']} general answers name {self.name}",
            f"  knowledge {self.base.knowledge}/{t['knowledge']} -> {self.tuned.knowledge}/{t['knowledge']} answered right"
            + (f"; lost: {', '.join(self.lost)}" if self.lost else "; none the base had right lost"),
            "  " + ("PASS" if self.passed else "FAIL") + " (targets: identity >= 90%, leakage <= 5%, no knowledge lost)",
        ]
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "totals": self.totals,
            "base": vars(self.base),
            "tuned": vars(self.tuned),
            "lost": self.lost,
            "passed": self.passed,
            "rows": self.rows,
        }


def score_check(name: str, base: dict[str, str], tuned: dict[str, str], langs=("en", "zh")) -> CheckResult:
    """Score base and tuned answers (question -> answer) of ``check_prompts(langs)``."""

    def named(text: str) -> bool:
        return name.lower() in text.lower()

    result = CheckResult(
        name,
        {
            "identity": sum(len(IDENTITY[lang]) for lang in langs),
            "leakage": sum(len(LEAKAGE[lang]) for lang in langs),
            "knowledge": sum(len(KNOWLEDGE[lang]) for lang in langs),
        },
        SideScore(),
        SideScore(),
    )
    for lang in langs:
        for q in IDENTITY[lang]:
            result.base.identity += named(base[q])
            result.tuned.identity += named(tuned[q])
            result.rows.append({"set": "identity", "lang": lang, "question": q, "base": base[q], "tuned": tuned[q]})
        for q in LEAKAGE[lang]:
            result.base.leaks += named(base[q])
            result.tuned.leaks += named(tuned[q])
            result.rows.append({"set": "leakage", "lang": lang, "question": q, "base": base[q], "tuned": tuned[q]})
        for c in KNOWLEDGE[lang]:
            was, now = c.right(base[c.question]), c.right(tuned[c.question])
            result.base.knowledge += was
            result.tuned.knowledge += now
            if was and not now:
                result.lost.append(c.question)
            result.rows.append(
                {"set": "knowledge", "lang": lang, "question": c.question, "base": base[c.question], "tuned": tuned[c.question]}
            )
    return result
