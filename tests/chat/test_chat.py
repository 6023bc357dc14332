"""ChatSession (streaming, stop words, history, compare) and the chat CLI, on tiny and scripted models."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from tuner.chat.generate import GenerationSettings
from tuner.chat.session import ChatSession, ChatTurn
from tuner.chat.text import visible_text
from tuner.core.errors import ModelError, TunerError

GREEDY = GenerationSettings(max_new_tokens=12, temperature=0)


# ------------------------------------------------------------------------------- text filtering


def test_visible_text_cuts_at_stop_words_and_holds_back_partial_ones():
    stops = ["<|im_end|>", "Response:"]
    assert visible_text("Paris.<|im_end|>junk", stops) == ("Paris.", True)
    assert visible_text("Paris. Resp", stops) == ("Paris.", False)  # may become "Response:"
    assert visible_text("Paris. Resp", stops, final=True) == ("Paris. Resp", False)
    assert visible_text("  a<|im_start|>b ", stops, ["<|im_start|>"]) == ("ab", False)
    assert visible_text("caf\ufffd", stops) == ("caf", False)  # half a UTF-8 character


# ------------------------------------------------------------------------------ scripted model


class ScriptedLM:
    """Stands in for a transformers model: emits scripted tokens through generate()'s streamer and
    honours eos ids, stopping criteria and max_new_tokens like the real generate loop."""

    def __init__(self, tokenizer, pieces):
        import torch

        self.ids = [i for piece in pieces for i in tokenizer.encode(piece, add_special_tokens=False)]
        self.emitted = 0
        self.config = SimpleNamespace(max_position_embeddings=512)
        self._param = torch.zeros(1)

    def eval(self):
        return self

    def parameters(self):
        return iter([self._param])

    def generate(self, input_ids, attention_mask, generation_config, stopping_criteria, streamer):
        import torch

        streamer.put(input_ids)
        sequence = input_ids
        for token in self.ids[: generation_config.max_new_tokens]:
            sequence = torch.cat([sequence, torch.tensor([[token]])], dim=1)
            self.emitted += 1
            streamer.put(torch.tensor([token]))
            if token in generation_config.eos_token_id or stopping_criteria(sequence, None).all():
                break
        streamer.end()


def scripted(tokenizer, *pieces, **kwargs):
    model = ScriptedLM(tokenizer, pieces)
    return ChatSession("scripted", model=model, tokenizer=tokenizer, settings=GREEDY.updated(**kwargs)), model


def test_stream_stops_at_end_of_turn_and_deltas_add_up(tiny_tokenizer):
    session, model = scripted(tiny_tokenizer, "Hello", " there", "<|im_end|>", "junk after the turn")
    deltas = list(session.stream("Hi"))
    assert "".join(deltas) == "Hello there" == session.history[-1].assistant
    end = tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert model.emitted == model.ids.index(end) + 1 and session.last_finish == "stop"
    session2, _ = scripted(tiny_tokenizer, "Hello", " there", "<|im_end|>")
    assert list(session2.stream("Hi", cumulative=True))[-1] == "Hello there"


def test_multi_token_stop_word_is_honoured_and_never_shown(tiny_tokenizer):
    pieces = ["Action: calculator\nAction Input: 1+1\n", "Resp", "onse:", " 2", " and more text"] * 3
    session, model = scripted(tiny_tokenizer, *pieces, max_new_tokens=200)
    shown = []
    for answer, _delta in session._generate(
        [{"role": "user", "content": "q"}], session.settings, use_adapter=True, extra_stops=["Response:"]
    ):
        shown.append(answer)
    assert shown[-1] == "Action: calculator\nAction Input: 1+1"
    assert not any("Resp" in s for s in shown)
    assert model.emitted < len(model.ids) // 2  # generation stopped right there
    session2, _ = scripted(tiny_tokenizer, *pieces, max_new_tokens=200)
    assert session2.complete([{"role": "user", "content": "q"}], stop_words=["Response:"]).endswith("1+1")


def test_closing_the_stream_stops_generation_and_keeps_the_partial_answer(tiny_tokenizer):
    session, model = scripted(tiny_tokenizer, *(["word "] * 300), max_new_tokens=300)
    stream = session.stream("talk forever")
    first = [next(stream), next(stream)]
    stream.close()
    assert model.emitted < 300 and session.last_finish == "cancelled"
    assert session.history[-1].assistant.startswith("".join(first).strip())
    session.answer("again")  # the lock was released
    assert session.last_finish == "length"


def test_history_is_trimmed_to_the_context_window_keeping_the_system(tiny_tokenizer):
    session, _ = scripted(tiny_tokenizer, "ok", "<|im_end|>", max_new_tokens=16)
    session.system = "Be brief."
    session.context_window = 80
    session.history = [ChatTurn(f"question {i} " * 3, f"answer {i} " * 3) for i in range(6)]
    messages = session._conversation("last question", 16)
    assert messages[0] == {"role": "system", "content": "Be brief."}
    assert messages[-1]["content"] == "last question"
    assert 1 <= len(session.history) < 6 and messages[1]["content"] == session.history[0].user
    assert session.count_tokens(messages) <= 80 - 16
    with pytest.raises(TunerError, match="too long"):
        session._conversation("long " * 200, 16)
    session.reset()
    assert session.history == []


def test_generation_settings_are_checked(tiny_tokenizer):
    with pytest.raises(TunerError, match="temperature"):
        scripted(tiny_tokenizer, "x", temperature=-1)
    with pytest.raises(TunerError, match="unknown generation setting"):
        GREEDY.updated(temprature=1)


# ---------------------------------------------------------------------------------- tiny models


def test_tiny_model_multi_turn_chat(tiny_llama_dir):
    session = ChatSession(str(tiny_llama_dir), settings=GREEDY, system="Be brief.")
    first = session.answer("Hello")
    assert isinstance(first, str) and "<|im_end|>" not in first and "</s>" not in first
    session.answer("And then?")
    assert [t.user for t in session.history] == ["Hello", "And then?"]
    assert session.last_usage["new_tokens"] <= 12
    again = ChatSession(str(tiny_llama_dir), settings=GREEDY, system="Be brief.")
    assert again.answer("Hello") == first  # greedy is deterministic
    with pytest.raises(TunerError, match="adapter"):
        session.compare("Hello")


def test_compare_toggles_the_adapter_on_one_model(tmp_path, tiny_llama_dir):
    from tests.tiny import make_run

    run = make_run(tmp_path, tiny_llama_dir, std=0.2)
    session = ChatSession(str(tiny_llama_dir), adapter=run, settings=GREEDY)
    base_only = ChatSession(str(tiny_llama_dir), settings=GREEDY)
    assert session.adapter == run / "adapter" and session.has_adapter
    base, tuned = session.compare("Who are you?")
    assert base == "".join(base_only.stream_single("Who are you?"))
    assert tuned == "".join(session.stream_single("Who are you?"))  # adapter back on after compare
    assert base != tuned
    steps = list(session.stream_compare("Who are you?"))
    assert steps[-1] == (base, tuned) and steps[0][1] == ""


def test_quantized_chat_needs_cuda(tiny_llama_dir):
    import torch

    if torch.cuda.is_available():
        pytest.skip("has CUDA")
    with pytest.raises(ModelError, match="CUDA"):
        ChatSession(str(tiny_llama_dir), bits=4)


# ------------------------------------------------------------------------------------------- CLI


def cli(*argv):
    from tuner.__main__ import main

    return main(["chat", *argv])


def test_cli_prompt_and_json(tiny_llama_dir, tmp_path, capsys):
    model = str(tiny_llama_dir)
    assert cli(model, "--prompt", "Hello", "--temperature", "0", "--max-new-tokens", "8") == 0
    printed = capsys.readouterr().out
    assert printed.endswith("\n") and "<|im_end|>" not in printed
    questions = tmp_path / "q.txt"
    questions.write_text("Hello\n\nWho are you?\n")
    assert (
        cli(model, "--prompts", str(questions), "--json", "--temperature", "0", "--max-new-tokens", "8") == 0
    )
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["prompt"] for r in lines] == ["Hello", "Who are you?"] and all("answer" in r for r in lines)


def test_cli_compare_json(tiny_llama_dir, tmp_path, capsys):
    from tests.tiny import make_run

    run = make_run(tmp_path, tiny_llama_dir)
    args = ["--adapter", str(run), "--prompt", "Hi", "--temperature", "0", "--max-new-tokens", "8"]
    assert cli(str(tiny_llama_dir), *args, "--compare", "--json") == 0
    record = json.loads(capsys.readouterr().out)
    assert set(record) == {"prompt", "answer", "base_answer"}
    assert cli(str(tiny_llama_dir), *args, "--compare") == 0
    out = capsys.readouterr().out
    assert "--- base model:" in out and "--- fine-tuned:" in out


def test_cli_user_errors(tiny_llama_dir, tmp_path, capsys):
    model = str(tiny_llama_dir)
    assert cli(model, "--prompt", "Hi", "--compare") == 2
    assert "--compare needs --adapter" in capsys.readouterr().err
    assert cli(model, "--prompts", str(tmp_path / "none.txt")) == 2
    assert "no such file" in capsys.readouterr().err
    assert cli(model, "--prompt", "Hi", "--docs", str(tmp_path)) == 2
    assert cli(model, "--prompt", "Hi", "--bits", "4") == 2 or __import__("torch").cuda.is_available()


def test_cli_agent_json_terminates(tiny_llama_dir, capsys, monkeypatch):
    monkeypatch.delenv("SERPER_API_KEY", raising=False)
    args = ["--agent", "--prompt", "What is 2+2?", "--json", "--temperature", "0", "--max-new-tokens", "16"]
    assert cli(str(tiny_llama_dir), *args, "--max-steps", "2") == 0
    record = json.loads(capsys.readouterr().out)
    assert record["prompt"] == "What is 2+2?" and 1 <= record["steps"] <= 2 and record["answer"]
    # The tiny model's 512-token context cannot hold the tool prompt: the loop ends with a reason.
    assert record["stopped"] in ("answer", "max_steps", "error")


def test_cli_interactive_commands(tiny_llama_dir, capsys, monkeypatch):
    inputs = iter(["Hello", "/reset", "/nope", "Again", "/exit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(inputs))
    assert cli(str(tiny_llama_dir), "--temperature", "0", "--max-new-tokens", "6") == 0
    out = capsys.readouterr().out
    assert "/reset" in out and "/exit" in out  # the banner documents the commands
    assert "(conversation cleared)" in out and "unknown command /nope" in out


# ---------------------------------------------------------------------------------- embedded model


@pytest.mark.slow
def test_embedded_model_streams_and_stops_at_end_of_turn(default_model_dir, tmp_path, capsys):
    from tests.tiny import make_run

    settings = GenerationSettings(max_new_tokens=200, temperature=0)
    session = ChatSession("default", settings=settings)
    deltas = list(session.stream("What is the capital of France? One sentence."))
    assert len(deltas) > 3 and "Paris" in "".join(deltas)
    assert session.last_finish == "stop"  # ended on <|im_end|>, not on max_new_tokens
    session.close()

    run = make_run(tmp_path, default_model_dir, std=0.002)
    common = ["--prompt", "What is the capital of France?", "--temperature", "0", "--max-new-tokens", "64"]
    assert cli("default", "--adapter", str(run), *common) == 0
    assert "Paris" in capsys.readouterr().out
    assert cli("default", "--adapter", str(run), "--compare", *common) == 0
    out = capsys.readouterr().out
    assert out.count("Paris") >= 2 and "--- fine-tuned:" in out
