"""An Ollama Modelfile for a merged model: the chat template in Go-template syntax plus its stop words,
for use after a GGUF conversion of the merged folder."""

from __future__ import annotations

import json
import logging

log = logging.getLogger(__name__)

_ROLES = ("system", "user", "assistant")


def template_gaps(render) -> dict[str, str] | None:
    """The fixed text a chat template puts between messages, keyed by (previous role, next role).

    ``render(messages, add_generation_prompt=True) -> str``. Keys: ``start>system``, ``start>user``,
    ``system>user``, ``user>assistant``, ``assistant>user``, ``user>end`` (the generation prompt).
    None when the template's text depends on more than the neighbouring roles.

    Example:
        >>> from tests.tiny import CHATML_TEMPLATE  # doctest: +SKIP
        >>> template_gaps(chatml_render)["user>end"]  # doctest: +SKIP
        '<|im_end|>\\n<|im_start|>assistant\\n'
    """
    marks = [f"QXMARK{i}QX" for i in range(6)]
    roles = ["system", "user", "assistant", "user", "assistant", "user"]
    try:
        text = render(
            [{"role": r, "content": m} for r, m in zip(roles, marks, strict=True)], add_generation_prompt=True
        )
        plain = render(
            [{"role": r, "content": m} for r, m in zip(roles[1:4], marks[1:4], strict=True)],
            add_generation_prompt=True,
        )
    except Exception as exc:  # a template that refuses this conversation: no Modelfile template
        log.warning("cannot derive an Ollama template from the chat template: %s", exc)
        return None
    spans = []
    pos = 0
    for mark in marks:
        at = text.find(mark, pos)
        if at == -1:
            return None
        spans.append((at, at + len(mark)))
        pos = at + len(mark)
    gaps = {
        "start>system": text[: spans[0][0]],
        "system>user": text[spans[0][1] : spans[1][0]],
        "user>assistant": text[spans[1][1] : spans[2][0]],
        "assistant>user": text[spans[2][1] : spans[3][0]],
        "user>end": text[spans[5][1] :],
    }
    # The template must repeat itself turn after turn for a role-pair template to be exact.
    if (
        text[spans[3][1] : spans[4][0]] != gaps["user>assistant"]
        or text[spans[4][1] : spans[5][0]] != gaps["assistant>user"]
    ):
        return None
    first = plain.find(marks[1])
    if first == -1:
        return None
    gaps["start>user"] = plain[:first]
    return gaps


def _go(text: str) -> str:
    """A Go template string literal (JSON escapes are valid Go escapes)."""
    return "{{ " + json.dumps(text, ensure_ascii=False) + " }}"


def ollama_template(gaps: dict[str, str]) -> str:
    """An Ollama TEMPLATE (Go template over ``.Messages``) that reproduces the chat template."""
    branches = []
    for key in ("start>system", "start>user", "system>user", "user>assistant", "assistant>user"):
        prev, role = key.split(">")
        prev = "" if prev == "start" else prev
        keyword = "if" if not branches else "else if"
        branches.append(f'{{{{- {keyword} and (eq $prev "{prev}") (eq .Role "{role}") }}}}{_go(gaps[key])}')
    return "\n".join(
        [
            '{{- $prev := "" }}',
            "{{- range .Messages }}",
            *branches,
            "{{- end }}{{ .Content }}",
            "{{- $prev = .Role }}",
            "{{- end }}",
            '{{- if eq $prev "user" }}' + _go(gaps["user>end"]) + "{{ end }}",
        ]
    )


def ollama_modelfile(chat_template, gguf_name: str = "model.gguf", bos_token: str | None = None) -> str:
    """An Ollama Modelfile: the chat template in Go-template form and the stop words.

    ``bos_token``: give it only when the tokenizer adds BOS by itself (``tuner.export.gguf_tokenizer.adds_bos``;
    the GGUF then says so and llama.cpp adds it too): a leading BOS is then left out of the template,
    or it would be doubled. Tokenizers whose BOS text is also the template's first marker (SmolLM2:
    ``<|im_start|>``) but that add none must keep it, or the prompt loses its first ``<|im_start|>``.
    """
    gaps = template_gaps(chat_template.render)
    if gaps and bos_token:
        for key in ("start>system", "start>user"):
            gaps[key] = gaps[key].removeprefix(bos_token)
    stops = [w for w in dict.fromkeys([chat_template.end_of_turn, *(chat_template.stop_words or [])]) if w]
    lines = [
        "# Ollama Modelfile written by tuner.",
        f"# {gguf_name} comes from `tuner merge --gguf f16` or `tuner export-gguf <this folder> {gguf_name}`;",
        "# then: ollama create my-model -f Modelfile",
        f"FROM ./{gguf_name}",
        "",
    ]
    if gaps is None:
        lines.append(
            f"# The chat template ({chat_template.name}) could not be translated; add a TEMPLATE by hand."
        )
    else:
        lines += [f"# Chat template: {chat_template.name}", f'TEMPLATE """{ollama_template(gaps)}"""']
    lines += [f"PARAMETER stop {json.dumps(word, ensure_ascii=False)}" for word in stops]
    return "\n".join(lines) + "\n"
