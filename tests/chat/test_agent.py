"""Agent mode: the ReAct loop with a scripted model, the tools, web search against a local fake server."""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from tuner.chat.agent import Agent, parse_tool_input
from tuner.chat.tools import (
    ToolError,
    calculate,
    calculator_tool,
    current_datetime,
    datetime_tool,
    default_tools,
    document_search_tool,
)
from tuner.core.errors import TunerError
from tuner.data import react


class ScriptedModel:
    """A fake model: returns the scripted assistant turns in order and records what it was shown."""

    def __init__(self, *turns):
        self.turns = list(turns)
        self.seen: list[list[dict]] = []

    def __call__(self, messages):
        self.seen.append([dict(m) for m in messages])
        return self.turns.pop(0) if self.turns else "Final Answer: done"


# ------------------------------------------------------------------------------------ calculator


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("17*23", 391),
        ("2^10", 1024),
        ("(1 + 2) * 3 / 4", 2.25),
        ("sqrt(16) + abs(-2)", 6),
        ("7 // 2 % 3", 0),
        ("-3 ** 2", -9),
        ("round(pi, 3)", 3.142),
        ("12 × 3 =", 36),
    ],
)
def test_calculator_arithmetic(expression, value):
    assert calculate(expression) == value


@pytest.mark.parametrize(
    "expression",
    [
        "__import__('os').system('echo hi')",
        "open('x')",
        "(1).__class__",
        "[1, 2]",
        "'a' * 3",
        "lambda: 1",
        "9 ** 9 ** 9",
        "10 ** 100000",
        "1 / 0",
        "x + 1",
        "",
        "1 +",
        "2" * 400,
    ],
)
def test_calculator_refuses_code_and_huge_numbers(expression):
    with pytest.raises(ToolError):
        calculate(expression)


def test_parse_tool_input_forms():
    assert parse_tool_input('{"expression": "2+3"}', "expression") == {"expression": "2+3"}
    assert parse_tool_input("{'expression': '2+3'}", "expression") == {"expression": "2+3"}
    assert parse_tool_input('```JSON{"query": "x"}```', "query") == {"query": "x"}
    assert parse_tool_input("17 * 23", "expression") == {"expression": "17 * 23"}
    assert parse_tool_input("", "query") == {"query": ""}


# ------------------------------------------------------------------------------------------ loop


def test_scripted_model_answers_arithmetic_through_the_calculator():
    model = ScriptedModel(
        'Thought: I should multiply with the calculator.\nAction: calculator\nAction Input: {"expression": "17*23"}\n'
        "Response: 400",  # a model inventing the result: dropped, the real tool answers
        "Thought: I now know the final answer.\nFinal Answer: 17 times 23 is 391.",
    )
    agent = Agent(model, default_tools(environ={}))
    result = agent.run("What is 17 times 23?")
    assert result.stopped == "answer" and result.steps == 2
    assert "391" in result.answer
    assert [e.kind for e in result.events] == ["thought", "action", "observation", "thought", "answer"]
    assert json.loads(result.events[2].text) == {"result": 391}
    second = model.seen[1]
    assert second[0]["role"] == "system" and "calculator" in second[0]["content"]
    assert second[-2] == {
        "role": "assistant",
        "content": react.format_action(
            "I should multiply with the calculator.", "calculator", '{"expression": "17*23"}'
        ),
    }
    assert second[-1] == {"role": "user", "content": 'Response: {"result": 391}'}
    assert "400" not in json.dumps(second)


def test_loop_is_bounded_in_steps():
    calls = []

    def always_calls_a_tool(messages):
        calls.append(1)
        return 'Thought: again\nAction: calculator\nAction Input: {"expression": "1+1"}'

    result = Agent(always_calls_a_tool, [calculator_tool()], max_steps=3).run("loop forever")
    assert result.stopped == "max_steps" and len(calls) == 3 and result.events[-1].kind == "answer"


def test_loop_is_bounded_in_time():
    now = [0.0]

    def slow_model(messages):
        now[0] += 100.0  # each turn "takes" 100 s
        return 'Action: calculator\nAction Input: {"expression": "1+1"}'

    result = Agent(slow_model, [calculator_tool()], max_steps=50, max_seconds=250, clock=lambda: now[0]).run(
        "q"
    )
    assert result.stopped == "timeout" and result.steps == 3


def test_unknown_tool_and_tool_timeout_are_reported_to_the_model():
    import time

    from tuner.chat.tools import AgentTool
    from tuner.data.react import Tool

    sleepy = AgentTool(Tool("sleepy", "sleeps"), lambda params: time.sleep(5), "x")
    model = ScriptedModel(
        "Action: shell\nAction Input: rm -rf /",
        "Action: sleepy\nAction Input: {}",
        "Final Answer: ok",
    )
    result = Agent(model, [calculator_tool(), sleepy], tool_seconds=0.2).run("q")
    observations = [e.text for e in result.events if e.kind == "observation"]
    assert "unknown tool 'shell'" in observations[0] and "calculator" in observations[0]
    assert "longer than" in observations[1]
    assert result.answer == "ok"


def test_model_errors_end_the_loop_with_a_reason():
    def full(messages):
        raise TunerError("the conversation needs 600 tokens; the model's context is 512")

    result = Agent(full, [calculator_tool()]).run("q")
    assert result.stopped == "error" and "context" in result.answer and result.events[-1].kind == "answer"


def test_plain_answer_without_markers_ends_the_loop():
    result = Agent(ScriptedModel("Paris is the capital of France."), default_tools(environ={})).run(
        "Capital?"
    )
    assert result.answer == "Paris is the capital of France." and result.steps == 1


# ----------------------------------------------------------------------------------------- tools


def test_datetime_tool():
    import datetime as dt

    moment = dt.datetime(2024, 2, 29, 12, 0, tzinfo=dt.timezone.utc)
    assert current_datetime("Asia/Tokyo", now=moment) == {
        "date": "2024-02-29",
        "time": "21:00:00",
        "weekday": "Thursday",
        "timezone": "Asia/Tokyo",
    }
    with pytest.raises(ToolError, match="time zone"):
        current_datetime("Mars/Olympus")
    assert "date" in datetime_tool().run({})


def test_document_search(tmp_path):
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "aspirin.txt").write_text(
        "Aspirin relieves pain.\n\nTake aspirin with food to protect the stomach."
    )
    (docs / "sub" / "ibuprofen.md").write_text("# Ibuprofen\n\nIbuprofen reduces fever and inflammation.")
    (docs / "image.png").write_bytes(b"\x89PNG")
    tool = document_search_tool(docs)
    hits = tool.run({"query": "what reduces fever?"})["results"]
    assert hits[0]["file"].endswith("ibuprofen.md") and "fever" in hits[0]["text"]
    assert tool.run({"query": "quantum chromodynamics"})["results"] == []
    with pytest.raises(TunerError, match="not a folder"):
        document_search_tool(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TunerError, match="no text"):
        document_search_tool(empty)


def test_web_search_offered_only_with_a_key():
    names = [t.name for t in default_tools(environ={})]
    assert "web_search" not in names and names == ["calculator", "current_datetime"]
    assert "web_search" in [t.name for t in default_tools(environ={"SERPER_API_KEY": "k"})]


# ------------------------------------------------------------------------------ web search (fake)

FAKE_KEY = "serper-test-key-5f2a9c"


@pytest.fixture
def fake_serper():
    """A local HTTP server speaking the Serper search API; records every request."""
    requests = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            requests.append({"path": self.path, "key": self.headers.get("X-API-KEY"), "body": body})
            if self.headers.get("X-API-KEY") != FAKE_KEY:
                self.send_response(403)
                self.end_headers()
                return
            answer = {
                "answerBox": {"answer": "Paris"},
                "organic": [
                    {
                        "title": "France - Wikipedia",
                        "snippet": "Its capital is Paris.",
                        "link": "https://x/France",
                    },
                    # a hostile server echoing the key back: it must still never reach the transcript
                    {"title": "echo", "snippet": f"your key is {FAKE_KEY}", "link": "https://x/echo"},
                ],
            }
            data = json.dumps(answer).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):  # keep test output quiet
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", requests
    server.shutdown()
    server.server_close()


def test_web_search_through_fake_server_never_leaks_the_key(fake_serper, caplog):
    url, requests = fake_serper
    environ = {"SERPER_API_KEY": FAKE_KEY, "SERPER_BASE_URL": url}
    model = ScriptedModel(
        'Thought: search the web.\nAction: web_search\nAction Input: {"query": "capital of France"}',
        "Thought: I now know the final answer.\nFinal Answer: Paris",
    )
    caplog.set_level(logging.DEBUG)
    agent = Agent(model, default_tools(environ=environ), secrets=[FAKE_KEY])
    result = agent.run("What is the capital of France?")
    assert result.answer == "Paris"
    assert requests == [{"path": "/search", "key": FAKE_KEY, "body": {"q": "capital of France", "num": 5}}]
    observation = next(e.text for e in result.events if e.kind == "observation")
    assert "Its capital is Paris." in observation
    everything = (
        json.dumps(result.to_dict()) + json.dumps(result.transcript) + json.dumps(model.seen) + caplog.text
    )
    assert FAKE_KEY not in everything


def test_web_search_bad_key_is_a_tool_error(fake_serper):
    from tuner.chat.tools import serper_search

    url, _ = fake_serper
    with pytest.raises(ToolError, match="HTTP 403") as info:
        serper_search("q", "wrong-key", base_url=url)
    assert "wrong-key" not in str(info.value)


# ------------------------------------------------------------------------------ embedded model


@pytest.mark.slow
def test_embedded_model_agent_terminates_within_bounds(default_model_dir):
    from tuner.chat.agent import session_agent
    from tuner.chat.generate import GenerationSettings
    from tuner.chat.session import ChatSession

    session = ChatSession(
        str(default_model_dir), settings=GenerationSettings(max_new_tokens=96, temperature=0)
    )
    agent = session_agent(session, default_tools(environ={}), max_steps=3, max_seconds=240)
    result = agent.run("What is 17 times 23? Use the calculator.")
    assert result.stopped in ("answer", "max_steps", "timeout") and 1 <= result.steps <= 3
    assert result.events[-1].kind == "answer" and result.answer
    # The 135M model may or may not manage the format; when it calls the calculator, it must work.
    for event in result.events:
        if event.kind == "observation" and event.tool == "calculator" and "391" in (event.text or ""):
            assert json.loads(event.text) == {"result": 391}
