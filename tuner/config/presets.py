"""Presets: YAML training configs with a header comment, shipped in ``builtin_presets/`` (package data,
beside this module) or the workspace's ``presets/``.

A preset's file name is its name, ``{model}_{method}_{dataset}_{max_length}_e{epochs}``. Its header
comment says what it is for, the GPU memory it needs (``# GPU memory: ...``) and the command that runs
it (``# Run: python -m tuner train NAME``). The user's ``<workspace>/presets`` folder is searched
first, so a user preset with a shipped name is the one that runs.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path

from tuner.config.files import dump_config, read_yaml
from tuner.config.schema import TrainConfig
from tuner.core.errors import ConfigError, OutputExistsError, TunerError
from tuner.core.io import atomic_open
from tuner.core.workspace import workspace_dir

BUILTIN_DIR = Path(__file__).resolve().parent / "builtin_presets"
SUFFIXES = (".yaml", ".yml")
# {model}_{method}_{dataset}_{max_length}_e{epochs}, e.g. internlm2_chat_7b_qlora_oasst1_512_e3.
NAME_PATTERN = re.compile(
    r"^(?P<model>[a-z0-9_]+?)_(?P<method>lora|qlora|full)_(?P<dataset>[a-z0-9_]+)"
    r"_(?P<max_length>\d+)_e(?P<epochs>\d+)$"
)
_RUN_LINE = re.compile(r"^(#\s*Run:\s*python -m tuner train\s+)(\S+)(.*)$", re.MULTILINE)


@dataclass
class PresetInfo:
    """What list-presets shows about one preset (read from its header and keys, never executed)."""

    name: str
    path: Path
    source: str  # "workspace" or "builtin"
    description: str  # first paragraph of the header comment
    model: str
    method: str
    task: str
    dataset: str  # from the name, else the data file's stem
    max_length: int | None
    epochs: float | None
    max_steps: int | None
    gpu_memory: str  # the header's "GPU memory:" note, "" when absent
    command: str  # the header's "Run:" command, "" when absent
    error: str = ""  # set when the file cannot be read; the other fields are then partial


def preset_dirs() -> list[tuple[str, Path]]:
    """Folders searched for presets, first match wins: the workspace's ``presets/``, then the shipped one."""
    dirs = []
    user = workspace_dir() / "presets"
    if user.is_dir() and user.resolve() != BUILTIN_DIR:
        dirs.append(("workspace", user))
    dirs.append(("builtin", BUILTIN_DIR))
    return dirs


def _preset_files() -> dict[str, tuple[str, Path]]:
    found: dict[str, tuple[str, Path]] = {}
    for source, folder in preset_dirs():
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.suffix in SUFFIXES and path.is_file():
                found.setdefault(path.stem, (source, path))
    return dict(sorted(found.items()))


def read_header(text: str) -> str:
    """The leading comment block of a YAML text, without the ``# `` marks.

    >>> read_header("# For chat.\\n#\\n# Run: python -m tuner train x\\nlr: 1\\n")
    'For chat.\\n\\nRun: python -m tuner train x'
    """
    lines = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped.startswith("#"):
            if stripped:
                break
            lines.append("")  # a blank line inside the header block
            continue
        if stripped.startswith("# ---"):
            break  # a section heading of the body, not the header
        lines.append(stripped[1:].removeprefix(" "))
    return "\n".join(lines).strip("\n")


def _header_field(header: str, label: str) -> str:
    match = re.search(rf"^{label}:\s*(.+)$", header, re.MULTILINE | re.IGNORECASE)
    return match.group(1).strip() if match else ""


def _info(name: str, source: str, path: Path) -> PresetInfo:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        text, error = "", f"cannot read: {exc}"
    else:
        error = ""
    header = read_header(text)
    data: dict = {}
    if not error:
        try:
            data = read_yaml(path)
        except ConfigError as exc:
            error = "; ".join(exc.problems)
    parsed = NAME_PATTERN.match(name)
    data_path = str(data.get("data_path") or "")
    method = str(data.get("method", "lora"))
    max_length = data.get("max_length", 2048)
    epochs = data.get("max_epochs", 3)
    max_steps = data.get("max_steps", -1)
    return PresetInfo(
        name=name,
        path=path,
        source=source,
        description=header.split("\n\n")[0].replace("\n", " ").strip(),
        model=str(data.get("model", "default")),
        method=method,
        task=str(data.get("task", "sft")),
        dataset=parsed["dataset"] if parsed else Path(data_path).stem,
        max_length=max_length if isinstance(max_length, int) else None,
        epochs=epochs if isinstance(epochs, (int, float)) else None,
        max_steps=max_steps if isinstance(max_steps, int) and max_steps > 0 else None,
        gpu_memory=_header_field(header, "GPU memory"),
        command=_header_field(header, "Run"),
        error=error,
    )


def _matches(name: str, pattern: str | None) -> bool:
    if not pattern:
        return True
    if any(c in pattern for c in "*?["):
        return fnmatch.fnmatch(name.lower(), pattern.lower())
    return pattern.lower() in name.lower()


def list_presets(pattern: str | None = None) -> list[PresetInfo]:
    """Presets whose name contains ``pattern`` (case-insensitive; ``*``/``?`` make it a glob), by name.

    >>> [p.name for p in list_presets("smollm2*identity*")]  # doctest: +SKIP
    ['smollm2_135m_instruct_lora_identity_256_e3']
    """
    return [
        _info(name, source, path)
        for name, (source, path) in _preset_files().items()
        if _matches(name, pattern)
    ]


def _looks_like_path(value: str) -> bool:
    return value.endswith(SUFFIXES) or "/" in value or "\\" in value


def find_preset(name_or_path: str | Path) -> Path:
    """The file of a preset name (workspace first, then shipped) or of a path to a .yaml file.

    Raises:
        TunerError: nothing found; the message lists close names and how to see them all.
    """
    value = str(name_or_path)
    if isinstance(name_or_path, Path) or _looks_like_path(value):
        path = Path(value).expanduser()
        candidates = [path] if path.is_absolute() else [path, workspace_dir() / path]
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        raise TunerError(f"{value}: no such config file")
    files = _preset_files()
    if value in files:
        return files[value][1]
    close = difflib.get_close_matches(value, list(files), n=5, cutoff=0.5)
    close += [name for name in files if value.lower() in name.lower() and name not in close][: 5 - len(close)]
    hint = f"; did you mean: {', '.join(close)}?" if close else ""
    raise TunerError(f"{value}: no such preset{hint} (see all with: python -m tuner list-presets)")


class PresetExistsError(OutputExistsError):
    """The copy's file already exists; copy-preset never overwrites, so there is no --force."""

    def __init__(self, path: Path):
        self.path = str(path)
        TunerError.__init__(
            self, f"{path}: already exists; copy-preset never overwrites it (edit it, or move it away first)"
        )


def copy_preset(name: str, dest_dir: str | Path) -> Path:
    """Copy a preset to ``dest_dir/<name>_copy.yaml`` for editing; header kept, its Run line updated.

    Raises:
        TunerError: unknown preset.
        PresetExistsError: the copy exists already (it is left untouched).
    """
    source = find_preset(name)
    dest = Path(dest_dir) / f"{source.stem}_copy.yaml"
    if dest.exists():
        raise PresetExistsError(dest)
    text = source.read_text(encoding="utf-8-sig")
    text = _RUN_LINE.sub(lambda m: f"{m[1]}{dest}{m[3]}", text, count=1)
    try:
        with atomic_open(dest, "w", force=False) as handle:
            handle.write(text)
    except OutputExistsError:
        raise PresetExistsError(dest) from None  # created meanwhile by someone else
    return dest


def save_preset(
    config: TrainConfig, path_or_name: str | Path, force: bool = False, *, header: str | None = None
) -> Path:
    """Save a config as a preset; a bare name goes to ``<workspace>/presets/<name>.yaml``.

    The preset's name is its file name, so ``name`` is not written. Without ``header`` the existing
    file's header is kept (with force), else a short one naming the model and the run command is made.

    Raises:
        OutputExistsError: the file exists and ``force`` is False.
    """
    value = str(path_or_name)
    if isinstance(path_or_name, Path) or _looks_like_path(value):
        path = Path(value)
    else:
        path = workspace_dir() / "presets" / f"{value}.yaml"
    if path.suffix not in SUFFIXES:
        path = path.with_name(path.name + ".yaml")
    if not force and path.exists():
        raise OutputExistsError(path, "preset")
    if header is None and path.exists():
        header = read_header(path.read_text(encoding="utf-8-sig")) or None
    if header is None:
        header = (
            f"{config.model}, {config.method}, {config.task}, {config.max_length} tokens.\n\n"
            f"Run: python -m tuner train {path.stem}"
        )
    with atomic_open(path, "w", force=force) as handle:
        handle.write(dump_config(config, header, skip=("name",)))
    return path
