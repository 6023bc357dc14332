"""An OpenAI-compatible HTTP server for one chat session: ``POST /v1/chat/completions`` (streamed as
server-sent events or not) and ``GET /v1/models``.

Answers come from :meth:`tuner.chat.session.ChatSession.stream_messages`, the code the app and
``tuner chat`` use, so a client gets the same chat template, stop words and system prompt (the
adapter's training system prompt when the request has none). Built on the standard library's
``http.server``: one model answers one request at a time anyway (the session holds a lock), so a
thread per connection is all the concurrency needed, and no web framework is pulled in.

Security: it listens on 127.0.0.1 unless told otherwise; ``tuner serve`` refuses any other address
without an API key, which clients send as ``Authorization: Bearer KEY`` (the openai client's
``api_key``).
"""

from __future__ import annotations

import hmac
import json
import logging
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tuner.core.errors import TunerError

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 8 * 1024 * 1024
ROLES = {"system", "developer", "user", "assistant"}
# OpenAI parameters that change the answer but that tuner cannot honour: refused unless left at
# their neutral value, so a client never silently gets something else than it asked for.
UNSUPPORTED = {"n": 1, "presence_penalty": 0, "frequency_penalty": 0, "logprobs": False, "tools": None}
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class RequestError(Exception):
    """A request the server refuses; becomes an OpenAI-style error body with this status."""

    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param

    def body(self) -> dict:
        kind = "authentication_error" if self.status == 401 else "invalid_request_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


# ------------------------------------------------------------------------------ request parsing


def message_text(content, index: int) -> str:
    """The text of a message's content: a string, or a list of ``{"type": "text"}`` parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if (
                not isinstance(part, dict)
                or part.get("type") != "text"
                or not isinstance(part.get("text"), str)
            ):
                raise RequestError(
                    400, f"messages[{index}].content: only text parts are supported", param="messages"
                )
            parts.append(part["text"])
        return "".join(parts)
    raise RequestError(
        400, f"messages[{index}].content must be a string or a list of text parts", param="messages"
    )


def chat_messages(body: dict, system: str | None) -> list[dict]:
    """The request's messages as ``{"role", "content"}`` dicts, with ``system`` put first when the
    request brings no system message of its own."""
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise RequestError(400, "'messages' must be a non-empty list of {role, content}", param="messages")
    messages = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or item.get("role") not in ROLES:
            raise RequestError(
                400, f"messages[{i}].role must be one of {', '.join(sorted(ROLES))}", param="messages"
            )
        role = "system" if item["role"] == "developer" else item["role"]
        messages.append({"role": role, "content": message_text(item.get("content"), i)})
    if messages[-1]["role"] != "user":
        raise RequestError(
            400, "the last message must be the user's (the model answers it)", param="messages"
        )
    if system and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system})
    return messages


def _number(body: dict, key: str, kind, low, high):
    value = body.get(key)
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (kind is int and value != int(value))
    ):
        raise RequestError(400, f"'{key}' must be a {kind.__name__}, got {value!r}", param=key)
    if not low <= value <= high:
        raise RequestError(400, f"'{key}' must be between {low} and {high}, got {value}", param=key)
    return kind(value)


def generation_overrides(body: dict) -> tuple[dict, list[str]]:
    """(ChatSession generation settings, extra stop words) from the request's OpenAI parameters."""
    for key, neutral in UNSUPPORTED.items():
        if body.get(key) not in (None, neutral, [] if key == "tools" else neutral):
            raise RequestError(400, f"'{key}' is not supported by tuner serve (leave it out)", param=key)
    if body.get("response_format") not in (None, {"type": "text"}):
        raise RequestError(
            400,
            "'response_format' other than text is not supported by tuner serve (no constrained decoding)",
            param="response_format",
        )
    settings = {
        "temperature": _number(body, "temperature", float, 0, 2),
        "top_p": _number(body, "top_p", float, 1e-9, 1),
        "seed": _number(body, "seed", int, -(2**63), 2**63 - 1),
        "max_new_tokens": _number(body, "max_completion_tokens", int, 1, 10**6)
        or _number(body, "max_tokens", int, 1, 10**6),
    }
    stop = body.get("stop")
    if stop is None:
        stops = []
    elif isinstance(stop, str):
        stops = [stop]
    elif isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) and s for s in stop):
        stops = list(stop)
    else:
        raise RequestError(
            400, "'stop' must be a string or a list of up to 4 non-empty strings", param="stop"
        )
    return {k: v for k, v in settings.items() if v is not None}, stops


# ------------------------------------------------------------------------------------- server


class ChatServer:
    """Serves ``session`` over HTTP. ``start()`` runs it in a background thread (tests, the app);
    ``serve_forever()`` in the calling one (``tuner serve``).

    Example:
        >>> server = ChatServer(session, port=8000, api_key="sk-local")  # doctest: +SKIP
        >>> server.serve_forever()  # doctest: +SKIP
    """

    def __init__(
        self,
        session,
        *,
        host: str = "127.0.0.1",
        port: int = 8000,
        api_key: str | None = None,
        model_id: str = "tuner",
    ):
        self.session = session
        self.api_key = api_key or None
        self.model_id = model_id
        self.created = int(time.time())
        handler = type("Handler", (_Handler,), {"chat": self})
        try:
            self.httpd = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise TunerError(
                f"cannot listen on {host}:{port} ({exc.strerror or exc}); pick another --port"
            ) from exc
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}/v1"

    def start(self) -> ChatServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="tuner-serve", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join()

    # ------------------------------------------------------------------ responses

    def check_key(self, header: str | None) -> None:
        if self.api_key is None:
            return
        given = (header or "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), self.api_key.encode()):
            raise RequestError(
                401,
                "wrong or missing API key (send it as 'Authorization: Bearer KEY')",
                code="invalid_api_key",
            )

    def models(self) -> dict:
        return {
            "object": "list",
            "data": [{"id": self.model_id, "object": "model", "created": self.created, "owned_by": "tuner"}],
        }

    def parse_completion(self, body: dict) -> tuple[list[dict], dict, list[str]]:
        if body.get("model") != self.model_id:
            raise RequestError(
                404,
                f"model {body.get('model')!r} is not served here; this server serves {self.model_id!r}",
                code="model_not_found",
                param="model",
            )
        messages = chat_messages(body, self.session.system)
        settings, stops = generation_overrides(body)
        # Checked here, before a streamed answer's headers go out, so that it is a plain 400.
        needed, window = self.session.count_tokens(messages), self.session.context_window
        if needed >= window:
            raise RequestError(
                400,
                f"the conversation needs {needed} tokens; the model's context is {window}: shorten it",
                code="context_length_exceeded",
                param="messages",
            )
        return messages, settings, stops

    def completion(self, messages, settings, stops) -> dict:
        text = "".join(self.session.stream_messages(messages, stop_words=stops, **settings))
        return {
            "id": f"chatcmpl-{secrets.token_hex(12)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model_id,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": self.session.last_finish or "stop",
                }
            ],
            "usage": self.usage(),
        }

    def chunks(self, messages, settings, stops, include_usage: bool):
        """The streamed answer as chat.completion.chunk objects (the server frames them as events)."""
        base = {
            "id": f"chatcmpl-{secrets.token_hex(12)}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": self.model_id,
        }

        def chunk(delta: dict, finish: str | None = None, **extra) -> dict:
            return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}

        yield chunk({"role": "assistant", "content": ""})
        for delta in self.session.stream_messages(messages, stop_words=stops, **settings):
            if delta:
                yield chunk({"content": delta})
        yield chunk({}, self.session.last_finish or "stop")
        if include_usage:
            yield {**base, "choices": [], "usage": self.usage()}

    def usage(self) -> dict:
        used = self.session.last_usage or {}
        prompt, new = used.get("prompt_tokens", 0), used.get("new_tokens", 0)
        return {"prompt_tokens": prompt, "completion_tokens": new, "total_tokens": prompt + new}


class _Handler(BaseHTTPRequestHandler):
    chat: ChatServer  # set on the subclass each ChatServer makes
    server_version = "tuner-serve"

    def log_message(self, format, *args):  # noqa: A002 - BaseHTTPRequestHandler's signature
        log.info("%s %s", self.address_string(), format % args)

    def do_GET(self):
        self._handle(lambda: self._send_json(200, self._route_get()))

    def do_POST(self):
        self._handle(self._post)

    def _route_get(self) -> dict:
        self.chat.check_key(self.headers.get("Authorization"))
        path = self.path.split("?")[0].rstrip("/")
        if path == "/v1/models":
            return self.chat.models()
        if path == f"/v1/models/{self.chat.model_id}":
            return self.chat.models()["data"][0]
        raise RequestError(404, f"no such endpoint: GET {self.path} (try GET /v1/models)")

    def _post(self):
        self.chat.check_key(self.headers.get("Authorization"))
        if self.path.split("?")[0].rstrip("/") != "/v1/chat/completions":
            raise RequestError(404, f"no such endpoint: POST {self.path} (try POST /v1/chat/completions)")
        body = self._read_json()
        messages, settings, stops = self.chat.parse_completion(body)
        if body.get("stream"):
            options = body.get("stream_options") or {}
            self._send_events(self.chat.chunks(messages, settings, stops, bool(options.get("include_usage"))))
        else:
            self._send_json(200, self.chat.completion(messages, settings, stops))

    def _read_json(self) -> dict:
        try:
            size = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise RequestError(400, "bad Content-Length header") from None
        if size > MAX_BODY_BYTES:
            raise RequestError(413, f"the request body is over {MAX_BODY_BYTES // 2**20} MiB")
        try:
            body = json.loads(self.rfile.read(size) or b"null")
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RequestError(400, f"the request body is not valid JSON ({exc})") from None
        if not isinstance(body, dict):
            raise RequestError(400, "the request body must be a JSON object")
        return body

    def _handle(self, work) -> None:
        try:
            work()
        except RequestError as exc:
            self._send_json(exc.status, exc.body())
        except TunerError as exc:  # e.g. a conversation longer than the context window
            self._send_json(400, RequestError(400, str(exc)).body())
        except (BrokenPipeError, ConnectionResetError):
            log.info("the client closed the connection")
        except Exception as exc:  # one bad request must not take the server down
            log.exception("request failed")
            self._send_json(
                500,
                {
                    "error": {
                        "message": f"internal error: {exc}",
                        "type": "server_error",
                        "param": None,
                        "code": None,
                    }
                },
            )

    def _send_json(self, status: int, payload: dict) -> None:
        data = json.dumps(payload, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send_events(self, chunks) -> None:
        """Server-sent events, one ``data:`` line per chunk, then ``data: [DONE]``; the connection
        closes at the end (HTTP/1.0), so no length or chunked framing is needed. A client that goes
        away closes the generator, which stops generation at the next token."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        try:
            for item in chunks:
                self.wfile.write(f"data: {json.dumps(item, ensure_ascii=False)}\n\n".encode())
                self.wfile.flush()
        except TunerError as exc:  # headers are gone: the error travels as an event
            error = RequestError(400, str(exc)).body()
            self.wfile.write(f"data: {json.dumps(error, ensure_ascii=False)}\n\n".encode())
        finally:
            chunks.close()
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


def is_loopback(host: str) -> bool:
    return host in LOOPBACK_HOSTS or host.startswith("127.")
