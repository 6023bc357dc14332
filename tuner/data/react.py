"""The ReAct transcript format shared by agent training data and the chat agent.

An agent conversation alternates like this (tool results come back as the next *user* turn, so
they are context and never supervised)::

    system:    <tool list + the format below>
    user:      What is 17 times 23?
    assistant: Thought: I should use the calculator.
               Action: calculator
               Action Input: {"expression": "17*23"}
    user:      Response: {"result": 391}
    assistant: Thought: I now know the final answer.
               Final Answer: 17 times 23 is 391.

The data reader (tuner.data.formats, MS-Agent) writes these strings and the chat agent parses them
with :func:`parse_step`, so both sides always agree on the markers.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

THOUGHT = "Thought:"
ACTION = "Action:"
ACTION_INPUT = "Action Input:"
RESPONSE = "Response:"
FINAL_ANSWER = "Final Answer:"

# What the assistant thinks before answering when the data gave no thought text of its own.
FINAL_THOUGHT = "I now know the final answer."
DIRECT_THOUGHT = "I can answer this without using a tool."

# A model that forgets to end its turn after "Action Input:" starts inventing the tool result;
# generation stops there so that the real tool can answer.
STOP_WORDS = [RESPONSE]

PREAMBLE = "You are a helpful assistant that can use tools to answer the user's questions."


@dataclass
class Tool:
    """A tool the agent may call.

    ``parameters`` is a list of ``{"name", "description", "required"}`` dicts.
    """

    name: str
    description: str = ""
    parameters: list[dict[str, Any]] | None = None


def _describe_tool(tool: Tool) -> str:
    params = []
    for param in tool.parameters or []:
        text = str(param.get("name", ""))
        if param.get("description"):
            text += f" ({param['description']})"
        if str(param.get("required", "")).lower() == "true":
            text += ", required"
        params.append(text)
    line = f"- {tool.name}: {tool.description}".rstrip()
    if params:
        line += "\n  Parameters: " + "; ".join(params)
    return line


def build_system_prompt(tools: list[Tool], preamble: str = PREAMBLE) -> str:
    """The system prompt that lists the tools and explains the ReAct format.

    Example:
        >>> print(build_system_prompt([Tool("calculator", "Evaluate an expression.",
        ...     [{"name": "expression", "description": "the expression", "required": True}])]))
        ... # doctest: +ELLIPSIS
        You are a helpful assistant that can use tools to answer the user's questions.
        <BLANKLINE>
        You can use these tools:
        - calculator: Evaluate an expression.
          Parameters: expression (the expression), required
        ...
    """
    names = ", ".join(tool.name for tool in tools)
    tool_lines = "\n".join(_describe_tool(tool) for tool in tools)
    return (
        f"{preamble}\n\n"
        f"You can use these tools:\n{tool_lines}\n\n"
        "Use this format:\n"
        f"{THOUGHT} think about what to do next\n"
        f"{ACTION} the tool to use, one of [{names}]\n"
        f"{ACTION_INPUT} the tool's parameters as a JSON object\n"
        "Then stop. The tool's result comes back in the next message as\n"
        f"{RESPONSE} the result\n"
        "Repeat Thought/Action/Action Input as often as needed. When you can answer, write\n"
        f"{THOUGHT} I now know the final answer.\n"
        f"{FINAL_ANSWER} the answer to the user's question"
    )


def format_action(thought: str, tool: str, parameters: Any) -> str:
    """One assistant step that calls a tool.

    Example:
        >>> format_action("Use the calculator.", "calculator", {"expression": "1+1"})
        'Thought: Use the calculator.\\nAction: calculator\\nAction Input: {"expression": "1+1"}'
    """
    params = parameters if isinstance(parameters, str) else json.dumps(parameters, ensure_ascii=False)
    return f"{THOUGHT} {thought}\n{ACTION} {tool}\n{ACTION_INPUT} {params}"


def format_response(result: Any) -> str:
    """The user turn that carries a tool's result back to the model.

    Example:
        >>> format_response({"result": 391})
        'Response: {"result": 391}'
    """
    text = result if isinstance(result, str) else json.dumps(result, ensure_ascii=False)
    return f"{RESPONSE} {text}"


def format_final(thought: str, answer: str) -> str:
    """The assistant step that answers the user.

    Example:
        >>> format_final("I now know the final answer.", "391")
        'Thought: I now know the final answer.\\nFinal Answer: 391'
    """
    return f"{THOUGHT} {thought}\n{FINAL_ANSWER} {answer}"


@dataclass
class Step:
    """What one assistant turn asks for: a tool call (``action``) or a ``final_answer``."""

    thought: str = ""
    action: str | None = None
    action_input: str | None = None
    final_answer: str | None = None


_MARKERS = re.compile(
    rf"^\s*({re.escape(THOUGHT)}|{re.escape(ACTION_INPUT)}|{re.escape(ACTION)}|"
    rf"{re.escape(FINAL_ANSWER)}|{re.escape(RESPONSE)})",
    re.MULTILINE,
)


def parse_step(text: str) -> Step:
    """Parse an assistant turn written in the ReAct format.

    Text without any marker is taken as a final answer, so that a model that answers plainly still
    gets its answer shown. Anything after a ``Response:`` the model invented itself is dropped.

    Example:
        >>> parse_step('Thought: t\\nAction: calculator\\nAction Input: {"expression": "2*3"}')
        Step(thought='t', action='calculator', action_input='{"expression": "2*3"}', final_answer=None)
        >>> parse_step("Paris.").final_answer
        'Paris.'
    """
    parts: dict[str, str] = {}
    matches = list(_MARKERS.finditer(text))
    if not matches:
        return Step(final_answer=text.strip())
    for index, match in enumerate(matches):
        marker = match.group(1)
        if marker == RESPONSE:
            break
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        # The first occurrence wins: a model that repeats itself keeps its first plan.
        parts.setdefault(marker, text[match.end() : end].strip())
    if FINAL_ANSWER in parts:
        return Step(thought=parts.get(THOUGHT, ""), final_answer=parts[FINAL_ANSWER])
    if ACTION in parts:
        return Step(
            thought=parts.get(THOUGHT, ""), action=parts[ACTION], action_input=parts.get(ACTION_INPUT, "")
        )
    return Step(thought=parts.get(THOUGHT, ""), final_answer=parts.get(THOUGHT, text.strip()))
