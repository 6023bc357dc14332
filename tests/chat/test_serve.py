"""``tuner serve``: the OpenAI-compatible server, driven by the official ``openai`` client over real
HTTP on 127.0.0.1 (a scripted model for exact texts, a tiny real model for equality with chat)."""

from __future__ import annotations

import pytest

from tests.chat.test_chat import GREEDY, ScriptedLM
from tuner.chat.server import ChatServer
from tuner.chat.session import ChatSession

openai = pytest.importorskip("openai")


class RecordingLM(ScriptedLM):
    """A scripted model that also keeps the last prompt it was given."""

    def generate(self, input_ids, **kwargs):
        self.prompt = input_ids[0].tolist()
        return super().generate(input_ids, **kwargs)


@pytest.fixture
def served(tiny_tokenizer):
    """(server, client, model): a scripted answer behind a server with an API key."""
    model = RecordingLM(tiny_tokenizer, ["Paris is", " the capital.", "<|im_end|>", "junk after the turn"])
    session = ChatSession(
        "scripted", model=model, tokenizer=tiny_tokenizer, settings=GREEDY, system="Be brief."
    )
    server = ChatServer(session, port=0, api_key="sk-test", model_id="tuna").start()
    client = openai.OpenAI(base_url=server.url, api_key="sk-test", max_retries=0, timeout=30)
    yield server, client, model
    server.close()


def ask(client, **kwargs):
    return client.chat.completions.create(
        model="tuna", messages=[{"role": "user", "content": "What is the capital of France?"}], **kwargs
    )


def test_plain_request_uses_the_chat_template_system_prompt_and_stop_word(served, tiny_tokenizer):
    server, client, model = served
    reply = ask(client)
    assert reply.choices[0].message.content == "Paris is the capital."
    assert reply.choices[0].finish_reason == "stop" and reply.model == "tuna"
    assert (
        reply.usage.completion_tokens
        == model.ids.index(tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")) + 1
    )
    prompt = tiny_tokenizer.decode(model.prompt)
    assert prompt == server.session.chat_template.render(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is the capital of France?"},
        ],
        add_generation_prompt=True,
    )
    assert reply.usage.prompt_tokens == len(model.prompt)
    assert [m.id for m in client.models.list().data] == ["tuna"]


def test_streamed_request_adds_up_to_the_plain_answer(served):
    _server, client, _model = served
    chunks = list(ask(client, stream=True, stream_options={"include_usage": True}))
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(deltas) >= 2 and "".join(deltas) == "Paris is the capital."
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
    assert chunks[-1].usage.completion_tokens > 0 and chunks[0].choices[0].delta.role == "assistant"


def test_request_limits_and_stop_words(served):
    _server, client, _model = served
    short = ask(client, max_tokens=1)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 1
    assert ask(client, stop=[" the"]).choices[0].message.content == "Paris is"


def test_bad_requests_get_clear_errors(served):
    _server, client, _model = served
    with pytest.raises(openai.BadRequestError, match="non-empty list"):
        client.chat.completions.create(model="tuna", messages=[])
    with pytest.raises(openai.BadRequestError, match="last message must be the user"):
        client.chat.completions.create(model="tuna", messages=[{"role": "assistant", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="temperature"):
        ask(client, temperature=5)
    with pytest.raises(openai.BadRequestError, match="'n' is not supported"):
        ask(client, n=2)
    with pytest.raises(openai.BadRequestError, match="response_format"):
        ask(client, response_format={"type": "json_object"})
    with pytest.raises(openai.NotFoundError, match="serves 'tuna'"):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="context"):
        client.chat.completions.create(model="tuna", messages=[{"role": "user", "content": "word " * 600}])


def test_a_wrong_or_missing_key_is_refused(served):
    server, _client, _model = served
    wrong = openai.OpenAI(base_url=server.url, api_key="sk-wrong", max_retries=0, timeout=30)
    with pytest.raises(openai.AuthenticationError, match="API key"):
        ask(wrong)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()


def test_a_real_model_answers_as_the_chat_session_does(tiny_llama_dir):
    session = ChatSession(str(tiny_llama_dir), settings=GREEDY)
    expected = ChatSession(str(tiny_llama_dir), settings=GREEDY).answer_single("Hello")
    server = ChatServer(session, port=0, model_id="tiny").start()
    try:
        client = openai.OpenAI(base_url=server.url, api_key="none", max_retries=0, timeout=60)
        reply = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "Hello"}], temperature=0, max_tokens=12
        )
        assert reply.choices[0].message.content == expected
    finally:
        server.close()


def test_serve_refuses_the_network_without_a_key(capsys, monkeypatch):
    from tuner.__main__ import main

    monkeypatch.delenv("TUNER_API_KEY", raising=False)
    assert main(["serve", "default", "--listen"]) == 2
    assert "--api-key" in capsys.readouterr().err
    assert main(["serve", "default", "--host", "0.0.0.0"]) == 2
