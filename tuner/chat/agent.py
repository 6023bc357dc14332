"""Agent mode: a ReAct loop (Thought / Action / Action Input / Response / Final Answer) over a fixed set
of tools, in the transcript format of the MS-Agent training data (tuner.data.react).

The model only ever produces text. The loop parses it, calls a whitelisted tool with the parsed
parameters, and feeds the result back as the next user turn (``Response: ...``). The loop is bounded
in steps and in wall-clock time, and every text it shows or returns is scrubbed of secrets (the web
search key).
"""

from __future__ import annotations

import ast
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

from tuner.chat.tools import AgentTool, ToolError
from tuner.core.errors import TunerError
from tuner.data import react

log = logging.getLogger(__name__)

MAX_STEPS = 6  # model turns per question; MS-Agent conversations use 1-3 tool calls
MAX_SECONDS = 180.0  # wall clock per question (CPU generation of a few turns fits)
TOOL_SECONDS = 30.0  # one tool call
OBSERVATION_CHARS = 2000  # a tool result longer than this is cut (it fills the context otherwise)


@dataclass
class AgentEvent:
    """One thing that happened: ``thought``, ``action``, ``observation``, ``answer``."""

    kind: str
    text: str
    tool: str | None = None
    tool_input: str | None = None


@dataclass
class AgentResult:
    answer: str
    stopped: str  # answer | max_steps | timeout | error (the model could not go on, e.g. context full)
    steps: int  # model turns used
    events: list[AgentEvent] = field(default_factory=list)
    transcript: list[dict] = field(default_factory=list)  # the messages the model saw, plus its last turn

    def to_dict(self) -> dict:
        return {
            "answer": self.answer,
            "stopped": self.stopped,
            "steps": self.steps,
            "events": [{k: v for k, v in asdict(e).items() if v is not None} for e in self.events],
        }


def parse_tool_input(raw: str | None, main_param: str) -> dict:
    """Parameters from an Action Input: a JSON object, a Python-literal dict, or plain text.

    Plain text (or a JSON scalar) becomes ``{main_param: text}``. Nothing is executed: Python
    literals go through ``ast.literal_eval``.

    Example:
        >>> parse_tool_input('{"expression": "2+3"}', "expression")
        {'expression': '2+3'}
        >>> parse_tool_input("2+3", "expression")
        {'expression': '2+3'}
    """
    text = (raw or "").strip()
    if text.startswith("```"):  # MS-Agent data wraps calls in ```JSON ... ``` fences
        text = text.strip("`").strip()
        if text[:4].upper() == "JSON":
            text = text[4:].strip()
    for parse in (json.loads, ast.literal_eval):
        try:
            value = parse(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        if isinstance(value, dict):
            return {str(k): v for k, v in value.items()}
        if isinstance(value, (str, int, float)):
            return {main_param: value}
    return {main_param: text}


def _scrub(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def _call_with_timeout(tool: AgentTool, params: dict, seconds: float) -> str:
    """Run a tool in a worker thread; past ``seconds`` the loop goes on without it (daemon thread)."""
    box: dict = {}

    def work():
        try:
            box["value"] = tool.run(params)
        except ToolError as exc:
            box["value"] = {"error": str(exc)}
        except Exception as exc:  # a tool bug must not end the chat; the model sees the error
            log.debug("tool %s failed", tool.name, exc_info=True)
            box["value"] = {"error": f"{type(exc).__name__}: {exc}"}

    worker = threading.Thread(target=work, name=f"tool-{tool.name}", daemon=True)
    worker.start()
    worker.join(max(0.1, seconds))
    if worker.is_alive():
        return json.dumps({"error": f"the tool took longer than {seconds:.0f} s"})
    value = box.get("value")
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


class Agent:
    """The ReAct loop.

    Args:
        generate: ``generate(messages) -> str``: one assistant turn for a message list; it should stop
            at ``react.STOP_WORDS`` (``ChatSession.complete(..., stop_words=react.STOP_WORDS)``).
        tools: the whitelist (tuner.chat.tools.default_tools()).
        max_steps, max_seconds: bounds per question.
        secrets: strings removed from everything shown or returned.

    Example:
        >>> agent = Agent(lambda m: "Final Answer: 4", [])
        >>> agent.run("2+2?").answer
        '4'
    """

    def __init__(
        self,
        generate: Callable[[list[dict]], str],
        tools: list[AgentTool],
        *,
        max_steps: int = MAX_STEPS,
        max_seconds: float = MAX_SECONDS,
        tool_seconds: float = TOOL_SECONDS,
        secrets: list[str] | None = None,
        preamble: str = react.PREAMBLE,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.generate = generate
        self.tools = {tool.name: tool for tool in tools}
        self.max_steps = max_steps
        self.max_seconds = max_seconds
        self.tool_seconds = tool_seconds
        self.secrets = [s for s in (secrets or []) if s]
        self.preamble = preamble
        self.clock = clock

    def system_prompt(self) -> str:
        return react.build_system_prompt([tool.spec for tool in self.tools.values()], self.preamble)

    def stream(self, question: str, *, result: AgentResult | None = None) -> Iterator[AgentEvent]:
        """Yield events as the loop goes; the last one is always an ``answer``.

        Pass an empty AgentResult as ``result`` to also get the summary filled in.
        """
        result = result if result is not None else AgentResult("", "answer", 0)
        messages = [
            {"role": "system", "content": self.system_prompt()},
            {"role": "user", "content": question},
        ]
        deadline = self.clock() + self.max_seconds

        def emit(event: AgentEvent) -> AgentEvent:
            event.text = _scrub(event.text, self.secrets)
            if event.tool_input is not None:
                event.tool_input = _scrub(event.tool_input, self.secrets)
            result.events.append(event)
            return event

        def finish(answer: str, stopped: str) -> AgentEvent:
            result.answer, result.stopped = _scrub(answer, self.secrets), stopped
            result.transcript = [{**m, "content": _scrub(m["content"], self.secrets)} for m in messages]
            return emit(AgentEvent("answer", answer))

        for step in range(1, self.max_steps + 1):
            if self.clock() > deadline:
                yield finish(
                    f"I ran out of time ({self.max_seconds:.0f} s) before finding the answer.", "timeout"
                )
                return
            result.steps = step
            try:
                text = self.generate(messages)
            except TunerError as exc:  # e.g. the transcript outgrew the context window
                yield finish(f"I had to stop: {exc}", "error")
                return
            parsed = react.parse_step(text)
            if parsed.thought:
                yield emit(AgentEvent("thought", parsed.thought))
            if parsed.final_answer is not None:
                messages.append(
                    {"role": "assistant", "content": react.format_final(parsed.thought, parsed.final_answer)}
                )
                yield finish(parsed.final_answer, "answer")
                return
            name = (parsed.action or "").strip().strip("`'\"")
            tool = self.tools.get(name)
            # Keep the model's call in the canonical format (anything it invented after it is dropped).
            messages.append(
                {
                    "role": "assistant",
                    "content": react.format_action(parsed.thought, name, parsed.action_input or ""),
                }
            )
            yield emit(AgentEvent("action", name, tool=name, tool_input=parsed.action_input or ""))
            if tool is None:
                observation = json.dumps(
                    {"error": f"unknown tool {name!r}; use one of: {', '.join(self.tools) or 'none'}"}
                )
            else:
                params = parse_tool_input(parsed.action_input, tool.main_param)
                seconds = min(self.tool_seconds, max(0.1, deadline - self.clock()))
                log.debug(
                    "agent step %d: %s(%s)", step, name, _scrub(json.dumps(params, default=str), self.secrets)
                )
                observation = _call_with_timeout(tool, params, seconds)
            observation = _scrub(observation, self.secrets)
            if len(observation) > OBSERVATION_CHARS:
                observation = observation[:OBSERVATION_CHARS] + " ...(cut)"
            yield emit(AgentEvent("observation", observation, tool=name))
            messages.append({"role": "user", "content": react.format_response(observation)})
        yield finish(f"I could not reach an answer within {self.max_steps} steps.", "max_steps")

    def run(self, question: str) -> AgentResult:
        """Run the loop to the end and return the answer with every event."""
        result = AgentResult("", "answer", 0)
        for _ in self.stream(question, result=result):
            pass
        return result


def session_agent(session, tools: list[AgentTool], **kwargs) -> Agent:
    """An Agent whose model is a ChatSession (its adapter on, its generation settings)."""

    def generate(messages: list[dict]) -> str:
        return session.complete(messages, stop_words=react.STOP_WORDS)

    return Agent(generate, tools, **kwargs)
