"""``python -m tuner serve MODEL [--adapter DIR] [--bits 4|8] [--host 127.0.0.1] [--port 8000] [--listen --api-key KEY]``.

An OpenAI-compatible server (``/v1/chat/completions``, streamed or not, and ``/v1/models``) on the
chat code of ``tuner chat`` and the app. Any OpenAI client can then use the tuned model::

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
    client.chat.completions.create(model="tuner", messages=[{"role": "user", "content": "Hi"}])
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tuner.core.errors import TunerError

KEY_ENV = "TUNER_API_KEY"


def register(sub) -> None:
    parser = sub.add_parser(
        "serve",
        help="serve a model (optionally with an adapter) as an OpenAI-compatible API",
        description=(
            "Serve MODEL (a folder, a merged model, hub id or 'default'), optionally with a LoRA adapter, "
            "at http://HOST:PORT/v1 for any OpenAI client: POST /v1/chat/completions (stream or not), "
            "GET /v1/models. Listens on 127.0.0.1 only unless --listen, which needs an API key."
        ),
    )
    parser.add_argument("model", help="base or merged model: local folder, hub id or 'default'")
    parser.add_argument("--adapter", help="adapter folder, exported adapter, checkpoint or run folder")
    parser.add_argument("--bits", type=int, choices=[4, 8], help="load the base in 4 or 8 bits (CUDA only)")
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    parser.add_argument(
        "--template", help="chat template name (default: the adapter's, else the tokenizer's)"
    )
    parser.add_argument(
        "--system", help="system prompt for requests that bring none (default: the adapter's)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 = any free one)")
    parser.add_argument(
        "--listen", action="store_true", help="listen on every interface (0.0.0.0); needs an API key"
    )
    parser.add_argument(
        "--api-key",
        help=f"clients must send 'Authorization: Bearer KEY' (or set {KEY_ENV}); needed off 127.0.0.1",
    )
    parser.add_argument(
        "--model-id", help="the model's name in the API (default: the adapter's run, else the model's)"
    )
    parser.add_argument(
        "--max-new-tokens", type=int, default=512, help="answer length when a request sets none"
    )
    parser.add_argument(
        "--temperature", type=float, default=0.7, help="when a request sets none (0 = greedy)"
    )
    parser.add_argument("--trust-remote-code", action="store_true", help="allow the model's own code")
    parser.set_defaults(func=run)


def default_model_id(model: str, adapter_dir) -> str:
    """A readable name for /v1/models: the name of the run that trained the adapter, else the
    model's folder name ('default' for the embedded model)."""
    if adapter_dir is not None:
        from tuner.chat.load import saved_setting

        name = saved_setting(adapter_dir, "name")
        if name:
            return str(name)
        return Path(adapter_dir).parent.name or "tuner"
    return Path(model).name or model


def listen_address(args) -> tuple[str, str | None]:
    """(host, API key); refuses to listen beyond this machine without a key."""
    from tuner.chat.server import is_loopback

    host = "0.0.0.0" if args.listen else args.host
    key = args.api_key or os.environ.get(KEY_ENV) or None
    if not is_loopback(host) and key is None:
        raise TunerError(
            f"listening on {host} opens the model to the network: give --api-key KEY (or set {KEY_ENV}); "
            "clients then send it as their OpenAI api_key"
        )
    if not 0 <= args.port <= 65535:
        raise TunerError(f"--port must be 0..65535, not {args.port}")
    return host, key


def run(args) -> int:
    from tuner.chat.generate import GenerationSettings
    from tuner.chat.server import ChatServer
    from tuner.chat.session import ChatSession

    host, key = listen_address(args)
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature)
    problems = settings.problems()
    if problems:
        raise TunerError("; ".join(problems))
    session = ChatSession(
        args.model,
        adapter=args.adapter,
        bits=args.bits,
        precision=args.precision,
        template=args.template,
        system=args.system,
        settings=settings,
        trust_remote_code=args.trust_remote_code,
    )
    model_id = args.model_id or default_model_id(args.model, session.adapter)
    server = ChatServer(session, host=host, port=args.port, api_key=key, model_id=model_id)
    print(
        f"serving {model_id!r} (template {session.chat_template.name}) at {server.url}"
        f"{' (API key required)' if key else ''}; Ctrl-C stops",
        file=sys.stderr,
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.httpd.server_close()
        session.close()
    return 0
