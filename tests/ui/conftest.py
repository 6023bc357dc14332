"""A launched app on 127.0.0.1 in a fresh workspace, shared by the HTTP-client and browser tests."""

from __future__ import annotations

import socket
from contextlib import contextmanager

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def launched_app(workspace, **launch_kwargs):
    """Yield the URL of the app built and launched with ``workspace`` as its workspace and cwd."""
    pytest.importorskip("gradio")
    from tuner.ui.app import build_app

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNER_WORKSPACE", str(workspace))
        mp.chdir(workspace)
        demo = build_app("en")
        demo.queue()
        port = free_port()
        demo.launch(
            prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True, **launch_kwargs
        )
        try:
            yield f"http://127.0.0.1:{port}/"
        finally:
            try:
                demo.close()
            except RuntimeError as exc:
                # gradio sets its server loop's asyncio.Event from this thread, which races with
                # the loop iterating the event's waiters ("deque mutated during iteration"). The
                # flag is set by then; what close() had left to do is closing the server.
                if "mutated during iteration" not in str(exc):
                    raise
                if demo.server:
                    demo.server.close()
