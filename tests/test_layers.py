"""The layout is a contract: a subpackage imports only the ones below it, only train/ imports fast/,
no module imports another's private name, and no module re-exports what it imports."""

import ast
from pathlib import Path

ORDER = ["core", "models", "data", "config", "runs", "plan", "fast", "chat", "train", "export", "cli", "ui"]
TUNER = Path(__file__).resolve().parents[1] / "tuner"


def tuner_imports(tree: ast.AST) -> list[tuple[str, str, int]]:
    """(subpackage, imported name, line) for every tuner import, at a module's top or inside a function."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "tuner":
            parts = node.module.split(".")
            for alias in node.names:
                package = parts[1] if len(parts) > 1 else alias.name
                found.append((package, alias.name, node.lineno))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("tuner."):
                    found.append((alias.name.split(".")[1], alias.name, node.lineno))
    return found


def layer_violations(root: Path) -> list[str]:
    wrong = []
    for path in sorted(root.glob("*/**/*.py")):
        package = path.relative_to(root).parts[0]
        for used, name, line in tuner_imports(ast.parse(path.read_text(encoding="utf-8"))):
            where = f"{path.relative_to(root.parent)}:{line}"
            if used not in ORDER:
                wrong.append(f"{where} imports tuner.{used}, which is not a subpackage")
            elif used != package and ORDER.index(used) > ORDER.index(package):
                wrong.append(f"{where} imports tuner.{used}, a layer above tuner.{package}")
            elif used == "fast" and package not in ("fast", "train"):
                wrong.append(f"{where} imports tuner.fast; only tuner.train may")
            if name.startswith("_") and not name.startswith("__"):
                wrong.append(f"{where} imports the private name {name}")
    return wrong


def reexports(root: Path) -> list[str]:
    """Imports marked as re-exports (`# noqa: F401`) anywhere in the package."""
    return [
        f"{path.relative_to(root.parent)}:{number}"
        for path in sorted(root.rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if "import" in line and "noqa: F401" in line
    ]


def test_each_subpackage_imports_only_the_ones_below_it_and_only_train_imports_fast():
    assert layer_violations(TUNER) == []


def test_no_module_re_exports_what_it_imports():
    assert reexports(TUNER) == []


def test_tuner_itself_holds_only_the_entry_points():
    assert sorted(p.name for p in TUNER.glob("*.py")) == ["__init__.py", "__main__.py"]
    assert sorted(p.name for p in TUNER.iterdir() if p.is_dir() and p.name != "__pycache__") == sorted(ORDER)


def test_the_check_reports_every_planted_violation(tmp_path):
    root = tmp_path / "tuner"
    for package in ("core", "data", "plan", "chat", "train"):
        (root / package).mkdir(parents=True)
    (root / "core" / "io.py").write_text("def f():\n    from tuner.data.encode import encode\n")
    (root / "plan" / "decide.py").write_text("from tuner import fast\nfrom tuner.core.io import _tmp\n")
    (root / "chat" / "generate.py").write_text("import tuner.fast.attention\n")
    (root / "train" / "run.py").write_text("from tuner.fast.attention import use\nimport tuner.plan.decide\n")
    (root / "data" / "x.py").write_text("from tuner.helpers import E\n")
    assert layer_violations(root) == [
        "tuner/chat/generate.py:1 imports tuner.fast; only tuner.train may",
        "tuner/core/io.py:2 imports tuner.data, a layer above tuner.core",
        "tuner/data/x.py:1 imports tuner.helpers, which is not a subpackage",
        "tuner/plan/decide.py:1 imports tuner.fast, a layer above tuner.plan",
        "tuner/plan/decide.py:2 imports the private name _tmp",
    ]


def test_the_package_map_lists_every_subpackage_in_layer_order():
    import tuner

    listed = [line.split()[1] for line in tuner.__doc__.splitlines() if line.startswith("- ")]
    assert listed == ORDER
