"""Readers of every data format: exact messages from the example files, and every kind of bad record."""

from __future__ import annotations

import json

import pytest

from tuner.core.errors import DataError
from tuner.data import react
from tuner.data.formats import FORMATS, detect_format, load_samples


def messages(result):
    return [sample["messages"] for sample in result.samples]


def write(tmp_path, name, lines):
    path = tmp_path / name
    body = "\n".join(
        line if isinstance(line, str) else json.dumps(line, ensure_ascii=False) for line in lines
    )
    path.write_text(body + "\n", encoding="utf-8")
    return path


def u(text):
    return {"role": "user", "content": text}


def a(text):
    return {"role": "assistant", "content": text}


def s(text):
    return {"role": "system", "content": text}


# ----------------------------------------------------------------------------- the example files


def test_conversation_example(shared_data):
    result = load_samples(shared_data / "formats" / "conversation.jsonl")
    assert result.format == "conversation" and result.problems == []
    assert messages(result) == [
        [
            s("You are a patient math tutor."),
            u("What is a prime number?"),
            a("A prime number is a whole number greater than 1 whose only divisors are 1 and itself."),
            u("Is 9 prime?"),
            a("No. 9 = 3 x 3, so it has a divisor other than 1 and 9."),
        ],
        [
            u("请用一句话解释什么是光合作用。"),
            a("光合作用是植物利用光能把二氧化碳和水转化为有机物并释放氧气的过程。"),
        ],
    ]
    assert [sample["source"]["line"] for sample in result.samples] == [1, 2]


def test_alpaca_example(shared_data):
    result = load_samples(shared_data / "formats" / "alpaca.jsonl")
    assert result.format == "alpaca"
    assert messages(result) == [
        [u("Give a synonym for the word.\n\nhappy"), a("joyful")],
        [u("Name the largest ocean on Earth."), a("The Pacific Ocean.")],
    ]


def test_openai_example(shared_data):
    result = load_samples(shared_data / "formats" / "openai.jsonl")
    assert result.format == "openai"
    assert messages(result) == [
        [s("Answer briefly."), u("What is H2O?"), a("Water."), u("And CO2?"), a("Carbon dioxide.")]
    ]


def test_sharegpt_example(shared_data):
    result = load_samples(shared_data / "formats" / "sharegpt.jsonl")
    assert result.format == "sharegpt"
    assert messages(result) == [[s("You are terse."), u("Capital of Japan?"), a("Tokyo.")]]


def test_guanaco_example(shared_data):
    result = load_samples(shared_data / "formats" / "guanaco.jsonl")
    assert result.format == "guanaco"
    assert messages(result) == [
        [
            u("How do I boil an egg?"),
            a("Put the egg in boiling water for about nine minutes, then cool it in cold water."),
            u("And a soft one?"),
            a("About six minutes."),
        ]
    ]


def test_pretrain_examples(shared_data):
    jsonl = load_samples(shared_data / "formats" / "pretrain.jsonl")
    assert jsonl.format == "pretrain"
    assert [sample["text"] for sample in jsonl.samples] == [
        "Ibuprofen is a nonsteroidal anti-inflammatory drug used to reduce fever and treat pain or inflammation.",
        "布洛芬是一种非甾体抗炎药，用于退烧以及缓解疼痛和炎症。",
    ]
    txt = load_samples(shared_data / "formats" / "pretrain.txt")
    assert txt.format == "pretrain"
    assert [(sample["text"], sample["source"]["line"]) for sample in txt.samples] == [
        ("Paracetamol, also known as acetaminophen, is used to treat fever and mild to moderate pain.", 1),
        ("At standard doses it has few side effects.", 3),
    ]


def test_msagent_example_becomes_react_transcript(shared_data):
    result = load_samples(shared_data / "formats" / "msagent.jsonl")
    assert result.format == "msagent" and result.problems == []
    weather = react.Tool(
        "weather_query",
        "Look up the weather forecast of a city for a given day.",
        [
            {"name": "city", "description": "city name", "required": "True"},
            {"name": "date", "description": "date, YYYY-MM-DD", "required": "True"},
        ],
    )
    calculator = react.Tool(
        "calculator",
        "Evaluate an arithmetic expression.",
        [{"name": "expression", "description": "the expression", "required": "True"}],
    )
    system = s(react.build_system_prompt([weather, calculator]))
    assert messages(result) == [
        [
            system,
            u("明天上海天气怎么样？"),
            a(
                'Thought: 我需要查询上海明天的天气。\nAction: weather_query\nAction Input: {"city": "上海", "date": "2026-11-28"}'
            ),
            u('Response: {"city": "上海", "weather": "多云", "temperature": "9-15°C"}'),
            a("Thought: I now know the final answer.\nFinal Answer: 明天上海多云，气温 9 到 15 摄氏度。"),
        ],
        [
            system,
            u("What is 17 times 23?"),
            a(
                'Thought: I should use the calculator.\nAction: calculator\nAction Input: {"expression": "17*23"}'
            ),
            u('Response: {"result": 391}'),
            a("Thought: I now know the final answer.\nFinal Answer: 17 times 23 is 391."),
        ],
        [
            system,
            u("Say hello in French."),
            a("Thought: I can answer this without using a tool.\nFinal Answer: Bonjour !"),
        ],
    ]
    prompt = system["content"]
    assert "- weather_query: Look up the weather forecast of a city for a given day." in prompt
    assert "Parameters: city (city name), required; date (date, YYYY-MM-DD), required" in prompt
    for marker in ("Thought:", "Action:", "Action Input:", "Response:", "Final Answer:"):
        assert marker in prompt


def test_msagent_string_is_never_evaluated(tmp_path):
    marker = tmp_path / "pwned"
    payload = f"__import__('pathlib').Path({str(marker)!r}).write_text('x')"
    path = write(tmp_path, "evil.jsonl", [{"conversations": payload}])
    result = load_samples(path, "msagent")
    assert not marker.exists()
    assert result.samples == []
    assert [(p.line, p.field) for p in result.problems] == [(1, "conversations")]


def test_msagent_real_list_and_parse_step_roundtrip(tmp_path):
    value = (
        'thinking<|startofthink|>```JSON\n{"api_name": "calc", "parameters": {"x": 1}}\n```<|endofthink|>'
        '<|startofexec|>```JSON\n{"r": 2}\n```<|endofexec|>It is 2.'
    )
    record = {"conversations": [{"from": "user", "value": "q"}, {"from": "assistant", "value": value}]}
    path = write(tmp_path, "list.jsonl", [record])
    result = load_samples(path)
    assert result.format == "msagent"
    got = result.samples[0]["messages"]
    # Tools that were called but never described are still listed in the system prompt.
    assert got[0]["role"] == "system" and "- calc:" in got[0]["content"]
    step = react.parse_step(got[2]["content"])
    assert (step.thought, step.action, step.action_input) == ("thinking", "calc", '{"x": 1}')
    assert react.parse_step(got[4]["content"]).final_answer == "It is 2."


# ----------------------------------------------------------------------------- detection


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"conversation": []}, "conversation"),
        ({"instruction": "i", "input": "", "output": "o"}, "alpaca"),
        ({"messages": []}, "openai"),
        ({"conversations": [{"from": "human", "value": "x"}]}, "sharegpt"),
        ({"conversations": "[{'from': 'user', 'value': 'x'}]"}, "msagent"),
        ({"text": "### Human: a### Assistant: b"}, "guanaco"),
        ({"text": "plain"}, "pretrain"),
    ],
)
def test_detect_format(record, expected):
    assert detect_format(record) == expected
    assert expected in FORMATS


def test_detect_unknown_lists_known_formats():
    with pytest.raises(DataError, match=r"unknown format \(fields: 'q', 'a'\).*alpaca"):
        detect_format({"q": 1, "a": 2})


def test_unknown_format_name_lists_known_ones(tmp_path):
    path = write(tmp_path, "a.jsonl", [{"text": "x"}])
    with pytest.raises(DataError) as info:
        load_samples(path, "llama")
    assert str(info.value) == (
        "unknown data format 'llama' (known formats: auto, conversation, alpaca, openai, sharegpt, "
        "guanaco, pretrain, msagent)"
    )


def test_alias_and_named_format(tmp_path):
    path = write(tmp_path, "g.jsonl", [{"text": "### Human: hi### Assistant: hello"}])
    assert load_samples(path, "oasst1").format == "guanaco"
    # Named pretrain keeps the markers as plain text.
    assert load_samples(path, "pretrain").samples[0]["text"] == "### Human: hi### Assistant: hello"


# ----------------------------------------------------------------------------- whole-file behaviour


def test_json_array_records_know_their_lines(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(
        '[\n  {"instruction": "A", "output": "1"},\n\n  {"instruction": "B",\n   "output": "2"}\n]\n',
        encoding="utf-8",
    )
    result = load_samples(path)
    assert [sample["source"]["line"] for sample in result.samples] == [2, 4]


def test_broken_json_array_raises_with_line_and_column(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('[\n  {"text": "a"},\n  {"text": "b" "c"}\n]\n', encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_samples(path)
    assert (info.value.line, info.value.column) == (3, 16)
    assert str(info.value).startswith(f"{path}:3:16: invalid JSON: Expecting ',' delimiter")


def test_bad_records_are_all_reported_and_good_ones_kept(tmp_path):
    path = write(
        tmp_path,
        "c.jsonl",
        [
            {"conversation": [{"input": "q1", "output": "a1"}]},
            '{"conversation": [{"input": "q2", "output": "a2"}',  # broken JSON
            {"conversation": [{"input": "q3"}]},  # no output
            {"conversation": [{"input": "q4", "output": "  "}]},  # empty turn
            {"conversation": [{"input": 5, "output": "a5"}]},  # wrong type
            "",
            {"conversation": "nope"},
            {"conversation": [{"input": "q8", "output": "a8"}]},
        ],
    )
    result = load_samples(path)
    assert result.format == "conversation"
    assert [sample["source"]["line"] for sample in result.samples] == [1, 8]
    assert result.records == 7
    assert [str(p) for p in result.problems] == [
        f"{path}:2:50: invalid JSON: Expecting ',' delimiter (fix or delete this line)",
        f"{path}:3: conversation[0].output: missing 'output' (add 'output' or delete the record)",
        f"{path}:4: conversation[0].output: empty 'output' (fill it in or delete the record)",
        f"{path}:5: conversation[0].input: 'input' must be a string, got a number (make it a string)",
        f"{path}:7: conversation: 'conversation' must be an array, got a string (make it an array)",
    ]
    with pytest.raises(DataError, match="5 bad records of 7"):
        result.raise_for_problems()


def test_conversation_problems(tmp_path):
    path = write(
        tmp_path,
        "c.jsonl",
        [
            {"messages": [{"role": "user", "content": "q"}]},
            {"messages": [{"role": "assistant", "content": "a"}]},
            {"messages": [{"role": "user", "content": "q"}, {"role": "tool", "content": "x"}]},
            {"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "a"}]},
        ],
    )
    result = load_samples(path)
    assert result.samples == []
    assert [p.message for p in result.problems] == [
        "the conversation ends with a user turn that has no output",
        "turn 1 is 'assistant' but should be 'user'",
        "unsupported role 'tool'",
        "empty user turn 1",
    ]


def test_guanaco_without_final_answer_is_a_problem(tmp_path):
    path = write(tmp_path, "g.jsonl", [{"text": "### Human: a### Assistant: b### Human: c"}])
    result = load_samples(path)
    assert result.format == "guanaco"
    assert [(p.line, p.field, p.message) for p in result.problems] == [
        (1, "text", "the conversation ends with a user turn that has no output")
    ]


def test_system_fills_in_only_where_missing(shared_data):
    result = load_samples(shared_data / "formats" / "conversation.jsonl", system="Be kind.")
    assert [m[0] for m in messages(result)] == [s("You are a patient math tutor."), s("Be kind.")]


def test_empty_file_raises(tmp_path):
    for name, body in (("e.jsonl", ""), ("b.jsonl", "\n  \n"), ("e.json", "[]"), ("e.txt", "\n\n")):
        path = tmp_path / name
        path.write_text(body, encoding="utf-8")
        with pytest.raises(DataError, match="empty file"):
            load_samples(path)


def test_missing_and_undecodable_files_raise(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_samples(tmp_path / "nope.jsonl")
    bad = tmp_path / "gbk.jsonl"
    bad.write_bytes('{"text": "ok"}\n{"text": "中文"}\n'.encode("gbk"))
    with pytest.raises(DataError) as info:
        load_samples(bad)
    assert info.value.line == 2 and "UTF-8" in str(info.value)


def test_no_recognisable_record_raises(tmp_path):
    path = write(tmp_path, "x.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(DataError) as info:
        load_samples(path)
    assert info.value.line == 1
    assert "unknown format (fields: 'question', 'answer')" in str(info.value)


def test_text_file_only_reads_as_pretrain(shared_data):
    with pytest.raises(DataError, match="can only be read as pretrain, not alpaca"):
        load_samples(shared_data / "formats" / "pretrain.txt", "alpaca")


def test_parse_step_forms():
    assert react.parse_step("Thought: done\nFinal Answer: 42") == react.Step(
        thought="done", final_answer="42"
    )
    assert react.parse_step("Just text.") == react.Step(final_answer="Just text.")
    # A tool result the model invented after its action is ignored.
    step = react.parse_step("Thought: t\nAction: calc\nAction Input: {}\nResponse: fake\nFinal Answer: no")
    assert (step.action, step.action_input, step.final_answer) == ("calc", "{}", None)
