"""``python -m tuner chat MODEL [--adapter DIR] [--prompt TEXT | --prompts FILE] [--compare] [--json] [--agent]``.

Without --prompt/--prompts: an interactive, streaming, multi-turn chat (/reset, /exit). With
--prompts each line is an independent question (history reset between them), the model loaded once.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tuner.core.errors import TunerError

COMMANDS = "/reset clears the conversation, /exit quits (Ctrl-D too; Ctrl-C stops an answer)"


def register(sub) -> None:
    parser = sub.add_parser(
        "chat",
        help="chat with a model, optionally with an adapter; compare before/after; agent mode",
        description=(
            "Chat with MODEL (a folder, hub id or 'default'), optionally with a LoRA adapter (not merged). "
            "Interactive unless --prompt or --prompts is given."
        ),
    )
    parser.add_argument("model", help="base model: local folder, hub id or 'default' (embedded SmolLM2-135M)")
    parser.add_argument("--adapter", help="adapter folder, exported adapter, checkpoint or run folder")
    parser.add_argument("--bits", type=int, choices=[4, 8], help="load the base in 4 or 8 bits (CUDA only)")
    parser.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "bf16", "fp16", "fp32"],
        help="weights dtype (default auto)",
    )
    parser.add_argument(
        "--template", help="chat template name (default: the adapter's, else the tokenizer's)"
    )
    parser.add_argument("--system", help="system prompt")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--prompt", help="answer this one question and exit")
    source.add_argument("--prompts", metavar="FILE", help="answer every line of FILE (one question per line)")
    parser.add_argument(
        "--compare", action="store_true", help="answer with the base model and with the adapter"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object per question")
    parser.add_argument(
        "--agent", action="store_true", help="ReAct agent mode with tools (calculator, date, ...)"
    )
    parser.add_argument(
        "--docs", metavar="DIR", help="agent mode: a folder of .txt/.md files the agent may search"
    )
    parser.add_argument(
        "--max-steps", type=int, default=6, help="agent mode: model turns per question (default 6)"
    )
    parser.add_argument(
        "--max-new-tokens", type=int, default=512, help="tokens per answer at most (default 512)"
    )
    parser.add_argument("--temperature", type=float, default=0.7, help="0 = greedy; default 0.7")
    parser.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling mass (default 0.9)")
    parser.add_argument(
        "--top-k", type=int, default=50, help="sample among the k likeliest tokens (default 50)"
    )
    parser.add_argument(
        "--repetition-penalty", type=float, default=1.1, help=">1 discourages repeats (default 1.1)"
    )
    parser.add_argument("--seed", type=int, help="random seed for reproducible sampling")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow the model's own code")
    parser.set_defaults(func=run)


def _questions(args) -> list[str] | None:
    if args.prompt is not None:
        if not args.prompt.strip():
            raise TunerError("--prompt is empty; give a question")
        return [args.prompt]
    if args.prompts is not None:
        path = Path(args.prompts)
        try:
            lines = path.read_text(encoding="utf-8-sig").splitlines()
        except FileNotFoundError:
            raise TunerError(
                f"{path}: no such file (--prompts needs a text file, one question per line)"
            ) from None
        questions = [line.strip() for line in lines if line.strip()]
        if not questions:
            raise TunerError(f"{path}: no questions in this file (one question per line)")
        return questions
    return None


def _check(args) -> None:
    if args.compare and not args.adapter:
        raise TunerError("--compare needs --adapter: it answers with and without the adapter")
    if args.compare and args.agent:
        raise TunerError("--compare and --agent cannot be combined; pick one")
    if args.docs and not args.agent:
        raise TunerError("--docs is for agent mode; add --agent")
    if args.max_steps < 1:
        raise TunerError("--max-steps must be at least 1")


def _open_session(args):
    from tuner.chat.generate import GenerationSettings
    from tuner.chat.session import ChatSession

    settings = GenerationSettings(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
    )
    problems = settings.problems()
    if problems:
        raise TunerError("; ".join(problems))
    return ChatSession(
        args.model,
        adapter=args.adapter,
        bits=args.bits,
        precision=args.precision,
        template=args.template,
        system=args.system,
        settings=settings,
        trust_remote_code=args.trust_remote_code,
    )


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


class Chat:
    """Answers one question in the mode the flags ask for, printing as it goes."""

    def __init__(self, args, session, agent=None):
        self.args = args
        self.session = session
        self.agent = agent

    def ask(self, question: str, *, multi_turn: bool) -> None:
        if self.agent is not None:
            self._agent(question)
        elif self.args.compare:
            self._compare(question)
        elif self.args.json:
            answer = (
                self.session.answer(question) if multi_turn else "".join(self.session.stream_single(question))
            )
            print(json.dumps({"prompt": question, "answer": answer}, ensure_ascii=False), flush=True)
        else:
            deltas = self.session.stream(question) if multi_turn else self.session.stream_single(question)
            for delta in deltas:
                _write(delta)
            _write("\n")

    def _compare(self, question: str) -> None:
        opts = self.session.compare_settings()
        if self.args.json:
            base = self.session.answer_single(question, use_adapter=False, **opts)
            tuned = self.session.answer_single(question, use_adapter=True, **opts)
            print(
                json.dumps({"prompt": question, "answer": tuned, "base_answer": base}, ensure_ascii=False),
                flush=True,
            )
            return
        for label, use_adapter in (("base model", False), ("fine-tuned", True)):
            _write(f"--- {label}:\n")
            for delta in self.session.stream_single(question, use_adapter=use_adapter, **opts):
                _write(delta)
            _write("\n")

    def _agent(self, question: str) -> None:
        from tuner.chat.agent import AgentResult

        result = AgentResult("", "answer", 0)
        for event in self.agent.stream(question, result=result):
            if self.args.json:
                continue
            if event.kind == "thought":
                _write(f"Thought: {event.text}\n")
            elif event.kind == "action":
                _write(f"Action: {event.tool} {event.tool_input}\n")
            elif event.kind == "observation":
                _write(f"Response: {event.text}\n")
            else:
                _write(f"Final Answer: {event.text}\n")
        if self.args.json:
            record = {"prompt": question, "answer": result.answer, **result.to_dict()}
            print(json.dumps(record, ensure_ascii=False), flush=True)


def _interactive(chat: Chat, describe: str) -> None:
    print(f"{describe}\nType a message and press Enter. {COMMANDS}.", flush=True)
    while True:
        try:
            line = input(">>> ")
        except (EOFError, KeyboardInterrupt):
            print()
            return
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return
        if text == "/reset":
            chat.session.reset()
            print("(conversation cleared)", flush=True)
            continue
        if text.startswith("/") and " " not in text:
            print(f"unknown command {text}; {COMMANDS}", flush=True)
            continue
        try:
            chat.ask(text, multi_turn=True)
        except KeyboardInterrupt:  # closing the stream stops generation; the chat goes on
            print("\n(stopped)", flush=True)


def run(args) -> int:
    _check(args)
    questions = _questions(args)
    session = _open_session(args)
    agent = None
    if args.agent:
        from tuner.chat.agent import session_agent
        from tuner.chat.tools import default_tools, secrets_of

        tools = default_tools(args.docs)
        agent = session_agent(session, tools, max_steps=args.max_steps, secrets=secrets_of())
        if not args.json:
            print(f"agent tools: {', '.join(t.name for t in tools)}", file=sys.stderr)
    chat = Chat(args, session, agent)
    try:
        if questions is None:
            adapter = f" + adapter {session.adapter}" if session.adapter else ""
            mode = " (agent mode: each message is a new task)" if agent else ""
            _interactive(
                chat, f"Chatting with {args.model}{adapter}, template {session.chat_template.name}{mode}."
            )
        else:
            for question in questions:
                if len(questions) > 1 and not args.json:
                    _write(f">>> {question}\n")
                chat.ask(question, multi_turn=False)
    finally:
        session.close()
    return 0
