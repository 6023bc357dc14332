"""The GPU memory a preset's header states, as ``tuner estimate`` says it.

Each shipped preset's header says ``GPU memory: about A GiB on a S GiB card, B GiB on 24 GiB, C GiB on
80 GiB (tuner estimate)``: S is the smallest common card the run fits, and a roomier card recomputes
fewer layers (faster, more memory). tests/config/test_presets.py keeps every header equal to what the
estimate says now; after a change to the estimate, rewrite the headers with::

    python -m tests.config.preset_memory --write
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys

CARDS = (6, 8, 12, 16, 24, 40, 48, 80)
MARK = "(tuner estimate)"
LINE = re.compile(r"^# GPU memory: (?P<head>.*?)(?P<phrase>about [^()]*\(tuner estimate\))", re.M)


def estimate_gib(name: str, card: int) -> float | None:
    """The memory ``tuner estimate NAME --gpu-gib CARD`` prints, None when the run does not fit."""
    from tuner.__main__ import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["estimate", name, "--gpu-gib", str(card)])
    found = re.search(r"about ([\d.]+) GiB needed", out.getvalue())
    return float(found.group(1)) if code == 0 and found else None


def memory_phrase(name: str) -> str:
    figures = {card: estimate_gib(name, card) for card in CARDS}
    fitting = [card for card in CARDS if figures[card] is not None]
    if not fitting:
        return f"more than {CARDS[-1]} GiB {MARK}"
    smallest = fitting[0]
    article = "an" if str(smallest).startswith("8") else "a"
    parts = [f"about {figures[smallest]:.1f} GiB on {article} {smallest} GiB card"]
    for card in (24, 80):
        if (
            card > smallest
            and figures[card] != figures[smallest]
            and f"{figures[card]:.1f} GiB" not in parts[-1]
        ):
            parts.append(f"{figures[card]:.1f} GiB on {card} GiB")
    return ", ".join(parts) + f" {MARK}"


def write_headers() -> None:
    from tuner.config.presets import BUILTIN_DIR

    for path in sorted(BUILTIN_DIR.glob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        match = LINE.search(text)
        if match is None:
            print(f"{path.name}: no '# GPU memory: ... {MARK}' line", file=sys.stderr)
            continue
        phrase = memory_phrase(path.stem)
        if match["phrase"] != phrase:
            path.write_text(
                text[: match.start("phrase")] + phrase + text[match.end("phrase") :], encoding="utf-8"
            )
            print(f"{path.name}: {phrase}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit(__doc__)
    # The estimate reads published model shapes offline; on a machine without the hub, asking it would
    # wait on network timeouts for every preset.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    write_headers()
