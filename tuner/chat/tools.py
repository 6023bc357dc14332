"""The agent's tools: a fixed whitelist, each a plain Python function over JSON parameters.

Nothing here runs code the model writes: the calculator walks the expression's syntax tree and
allows only numbers, arithmetic and a few math functions; the document search reads only text files
under the folder the user named; web search (Serper) exists only when the user set SERPER_API_KEY,
and the key travels only in the request header.
"""

from __future__ import annotations

import ast
import datetime as _dt
import ipaddress
import json
import logging
import math
import operator
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tuner.core.errors import TunerError
from tuner.data.react import Tool

log = logging.getLogger(__name__)

SERPER_KEY_ENV = "SERPER_API_KEY"
SERPER_URL_ENV = "SERPER_BASE_URL"  # tests point this at a local fake server
SERPER_URL = "https://google.serper.dev"


class ToolError(TunerError):
    """A tool could not do what it was asked; the message goes back to the model as the result."""


@dataclass
class AgentTool:
    """A tool the agent may call: its description for the prompt and the function that runs it.

    ``main_param`` receives the whole Action Input when the model wrote plain text instead of JSON.
    """

    spec: Tool
    run: Callable[[dict], object]
    main_param: str

    @property
    def name(self) -> str:
        return self.spec.name


# ------------------------------------------------------------------------------------ calculator

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCTIONS = {
    "abs": abs,
    "round": round,
    "min": min,
    "max": max,
    "sqrt": math.sqrt,
    "exp": math.exp,
    "log": math.log,
    "log10": math.log10,
    "log2": math.log2,
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
    "floor": math.floor,
    "ceil": math.ceil,
}
_CONSTANTS = {"pi": math.pi, "e": math.e, "tau": math.tau}
MAX_EXPRESSION_CHARS = 300
MAX_INT_BITS = 4096  # bigger integers take long to compute and print; nobody asks for them
MAX_DEPTH = 40


def _check_size(value):
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise ToolError("the result is too large")
    if isinstance(value, float) and not math.isfinite(value):
        raise ToolError("the result is not a finite number")
    return value


def _eval(node, depth: int = 0):
    if depth > MAX_DEPTH:
        raise ToolError("the expression is nested too deeply")
    if isinstance(node, ast.Expression):
        return _eval(node.body, depth + 1)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.Name) and node.id in _CONSTANTS:
        return _CONSTANTS[node.id]
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand, depth + 1))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left, depth + 1), _eval(node.right, depth + 1)
        if isinstance(node.op, ast.Pow):
            magnitude = math.log2(abs(left)) if left not in (0, 1, -1) else 0.0
            if abs(right) > 10_000 or magnitude * abs(right) > MAX_INT_BITS:
                raise ToolError("the power is too large")
        both_int = isinstance(left, int) and isinstance(right, int)
        if (
            isinstance(node.op, ast.Mult)
            and both_int
            and left.bit_length() + right.bit_length() > MAX_INT_BITS
        ):
            raise ToolError("the result is too large")
        try:
            return _check_size(_BINARY[type(node.op)](left, right))
        except ZeroDivisionError:
            raise ToolError("division by zero") from None
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in _FUNCTIONS
        and not node.keywords
    ):
        args = [_eval(arg, depth + 1) for arg in node.args]
        try:
            return _check_size(_FUNCTIONS[node.func.id](*args))
        except (TypeError, ValueError, OverflowError) as exc:
            raise ToolError(f"{node.func.id}: {exc}") from None
    allowed = ", ".join(sorted(_FUNCTIONS))
    raise ToolError(
        f"not allowed in an expression: {ast.unparse(node)}; "
        f"use numbers, + - * / // % ** ( ) and {allowed}, pi, e"
    )


def calculate(expression: str) -> int | float:
    """Evaluate an arithmetic expression safely (no names, attributes or code; bounded sizes).

    Example:
        >>> calculate("17 * 23")
        391
        >>> calculate("2^10 + sqrt(16)")
        1028
        >>> calculate("__import__('os')")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        tuner.chat.tools.ToolError: not allowed in an expression: __import__('os'); use numbers, ...
    """
    text = str(expression).strip()
    if not text:
        raise ToolError("empty expression")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"the expression is longer than {MAX_EXPRESSION_CHARS} characters")
    # What people (and models) type for multiply, divide and power.
    text = text.replace("×", "*").replace("÷", "/").replace("^", "**").rstrip("=").strip()
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise ToolError(f"cannot read the expression {expression!r}") from None
    value = _eval(tree)
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return int(value)  # 4.0 -> 4: what a person expects to read
    return round(value, 12) if isinstance(value, float) else value


def calculator_tool() -> AgentTool:
    spec = Tool(
        "calculator",
        "Evaluate an arithmetic expression exactly, e.g. 17*23 or sqrt(2)/3.",
        [{"name": "expression", "description": "the arithmetic expression", "required": True}],
    )
    return AgentTool(spec, lambda params: {"result": calculate(params.get("expression", ""))}, "expression")


# ------------------------------------------------------------------------------------- date/time


def current_datetime(timezone: str | None = None, now: _dt.datetime | None = None) -> dict:
    """The current date and time, in ``timezone`` (an IANA name such as Europe/Paris) or local time."""
    if timezone:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            zone = ZoneInfo(str(timezone))
        except (ZoneInfoNotFoundError, ValueError):
            raise ToolError(f"unknown time zone {timezone!r}; use a name like Europe/Paris or UTC") from None
        moment = (now or _dt.datetime.now(_dt.timezone.utc)).astimezone(zone)
    else:
        moment = (now or _dt.datetime.now()).astimezone()
    return {
        "date": moment.strftime("%Y-%m-%d"),
        "time": moment.strftime("%H:%M:%S"),
        "weekday": moment.strftime("%A"),
        "timezone": str(timezone or moment.tzname()),
    }


def datetime_tool() -> AgentTool:
    spec = Tool(
        "current_datetime",
        "Get today's date, the current time and the weekday.",
        [
            {
                "name": "timezone",
                "description": "optional IANA time zone, e.g. Europe/Paris",
                "required": False,
            }
        ],
    )
    return AgentTool(spec, lambda params: current_datetime(params.get("timezone") or None), "timezone")


# ------------------------------------------------------------------------------- document search

TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".rst")
MAX_FILES = 2000
MAX_FILE_BYTES = 5_000_000
CHUNK_CHARS = 800
_WORD = re.compile(r"[0-9a-zA-Z\u00c0-\u024f]+|[\u4e00-\u9fff]")


def _words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


class DocumentIndex:
    """Paragraph-sized passages of the text files under a folder, ranked by shared (rare) words."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder).expanduser().resolve()
        if not self.folder.is_dir():
            raise TunerError(f"{folder}: not a folder; give --docs a folder of .txt or .md files")
        self.passages: list[tuple[str, str, Counter]] = []
        files = sorted(p for p in self.folder.rglob("*") if p.suffix.lower() in TEXT_SUFFIXES and p.is_file())
        for path in files[:MAX_FILES]:
            if path.stat().st_size > MAX_FILE_BYTES:
                log.warning("skipping %s: larger than %d bytes", path, MAX_FILE_BYTES)
                continue
            text = path.read_text(encoding="utf-8", errors="replace")
            for passage in self._split(text):
                self.passages.append((str(path.relative_to(self.folder)), passage, Counter(_words(passage))))
        if not self.passages:
            raise TunerError(f"{folder}: no text in .txt/.md/.rst files here; put documents in it first")
        frequency = Counter(word for _, _, counts in self.passages for word in counts)
        total = len(self.passages)
        self.idf = {word: math.log(1 + total / n) for word, n in frequency.items()}

    @staticmethod
    def _split(text: str) -> list[str]:
        out = []
        for block in re.split(r"\n\s*\n", text):
            block = " ".join(block.split())
            while len(block) > CHUNK_CHARS:
                cut = block.rfind(" ", 0, CHUNK_CHARS)
                cut = cut if cut > CHUNK_CHARS // 2 else CHUNK_CHARS
                out.append(block[:cut])
                block = block[cut:].strip()
            if block:
                out.append(block)
        return out

    def search(self, query: str, top: int = 3) -> list[dict]:
        terms = set(_words(query))
        scored = []
        for index, (_, _, counts) in enumerate(self.passages):
            score = sum(self.idf[t] * (1 + math.log(counts[t])) for t in terms if t in counts)
            if score > 0:
                scored.append((score, index))
        scored.sort(key=lambda item: (-item[0], item[1]))
        return [{"file": self.passages[i][0], "text": self.passages[i][1]} for _, i in scored[:top]]


def document_search_tool(folder: str | Path) -> AgentTool:
    index = DocumentIndex(folder)

    def run(params: dict):
        query = str(params.get("query", "")).strip()
        if not query:
            raise ToolError("give a query")
        hits = index.search(query)
        return {"results": hits} if hits else {"results": [], "note": "no passage matches these words"}

    spec = Tool(
        "search_documents",
        f"Search the user's documents (the folder {index.folder.name}) and return matching passages.",
        [{"name": "query", "description": "words to look for", "required": True}],
    )
    return AgentTool(spec, run, "query")


# ------------------------------------------------------------------------------------ web search


def _is_loopback(url: str) -> bool:
    host = urllib.parse.urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serper_search(
    query: str, api_key: str, *, base_url: str = SERPER_URL, timeout: float = 15.0, num: int = 5
) -> dict:
    """Google results through the Serper API: POST {base_url}/search with the key in X-API-KEY.

    Errors never include the key (it is only ever in a request header).
    """
    url = base_url.rstrip("/") + "/search"
    request = urllib.request.Request(
        url,
        data=json.dumps({"q": query, "num": num}).encode("utf-8"),
        headers={"X-API-KEY": api_key, "Content-Type": "application/json"},
        method="POST",
    )
    # A local test server must not be sent through a proxy configured for the internet.
    handlers = [urllib.request.ProxyHandler({})] if _is_loopback(url) else []
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(request, timeout=timeout) as response:
            data = json.loads(response.read(2_000_000).decode("utf-8"))
    except urllib.error.HTTPError as exc:
        hint = " (check SERPER_API_KEY)" if exc.code in (401, 403) else ""
        raise ToolError(f"web search failed: HTTP {exc.code}{hint}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ToolError(f"web search failed: {reason}") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ToolError("web search failed: the answer was not JSON") from None
    out: dict = {}
    box = data.get("answerBox") or {}
    if box.get("answer") or box.get("snippet"):
        out["answer"] = box.get("answer") or box.get("snippet")
    graph = data.get("knowledgeGraph") or {}
    if graph.get("description"):
        out["knowledge"] = graph["description"]
    out["results"] = [
        {"title": r.get("title", ""), "snippet": r.get("snippet", ""), "link": r.get("link", "")}
        for r in (data.get("organic") or [])[:num]
    ]
    return out


def web_search_tool(api_key: str, base_url: str | None = None) -> AgentTool:
    base = base_url or os.environ.get(SERPER_URL_ENV) or SERPER_URL

    def run(params: dict):
        query = str(params.get("query", "")).strip()
        if not query:
            raise ToolError("give a query")
        return serper_search(query, api_key, base_url=base)

    spec = Tool(
        "web_search",
        "Search the web (Google) for current information; returns titles, snippets and links.",
        [{"name": "query", "description": "the search query", "required": True}],
    )
    return AgentTool(spec, run, "query")


# ---------------------------------------------------------------------------------------- choice


def default_tools(docs_dir: str | Path | None = None, environ=None) -> list[AgentTool]:
    """Calculator and date/time always; document search with ``docs_dir``; web search only with a key."""
    environ = os.environ if environ is None else environ
    tools = [calculator_tool(), datetime_tool()]
    if docs_dir:
        tools.append(document_search_tool(docs_dir))
    key = (environ.get(SERPER_KEY_ENV) or "").strip()
    if key:
        tools.append(web_search_tool(key, environ.get(SERPER_URL_ENV)))
    return tools


def secrets_of(environ=None) -> list[str]:
    """Values that must never be printed or logged (the web search key)."""
    environ = os.environ if environ is None else environ
    key = (environ.get(SERPER_KEY_ENV) or "").strip()
    return [key] if key else []
