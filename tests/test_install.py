"""Installing tuner as users do: the built wheel (not the checkout) in a fresh virtual environment, used
from a folder outside the repository; and scripts/install.sh's choices on the machine's own Python.

The wheel's environment borrows this one's dependencies through a .pth file (no torch reinstalled, no
network), but holds its own copy of tuner: every preset, DeepSpeed config and data file it reads comes
from the wheel's package data. TUNER_TEST_FULL_INSTALL=1 also runs install.sh for real on
/usr/bin/python3 (about 4 minutes, ~1.8 GB).
"""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PRESET = "smollm2_135m_instruct_lora_identity_256_e3"
SYSTEM_PYTHON = Path("/usr/bin/python3")


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy holding only what the build is told about (no stray checkout files)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "tuner", src / "tuner", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = tmp_path_factory.mktemp("dist")
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", dist, src]
    subprocess.run(build, check=True, capture_output=True, text=True, timeout=300)
    (found,) = dist.glob("tunerlab-*.whl")
    return found


@pytest.fixture(scope="session")
def wheel_env(wheel, tmp_path_factory) -> Path:
    """A new venv with the wheel installed (non-editable) and this environment's packages importable."""
    env = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", env], check=True, timeout=120)
    python = env / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # Paths listed in a .pth are added as they are: their own .pth files (this checkout's editable
    # install among them) do not run, so `import tuner` can only find the wheel's copy.
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    ours |= {p for p in sys.path if p.endswith(("site-packages", "dist-packages")) and Path(p).is_dir()}
    Path(site, "borrowed_dependencies.pth").write_text("".join(f"{p}\n" for p in sorted(ours)))
    install = [sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-index"]
    subprocess.run([*install, "--no-deps", "--ignore-installed", wheel], check=True, timeout=300)
    return env


def run(env: Path, *args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """``tuner ARGS`` through the console script the wheel installed, with umask 022."""
    clean = {k: v for k, v in os.environ.items() if k not in ("TUNER_WORKSPACE", "PYTHONPATH")}
    proc = subprocess.run(
        [env / "bin" / "tuner", *args],
        cwd=cwd,
        env=clean,
        capture_output=True,
        text=True,
        timeout=timeout,
        umask=0o022,
    )
    assert proc.returncode == 0, f"tuner {' '.join(args)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_the_wheel_ships_presets_deepspeed_configs_data_and_the_license(wheel):
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(p.name for p in (REPO / "tuner/config/builtin_presets").glob("*.yaml"))
    assert sorted(Path(n).name for n in names if n.startswith("tuner/config/builtin_presets/")) == shipped
    assert {
        f"tuner/config/deepspeed/{s}.json"
        for s in ("zero1", "zero2", "zero3", "zero2_offload", "zero3_offload")
    } <= set(names)
    assert "tuner/data/general_answers_smollm2.json" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert not [n for n in names if n.startswith("tests/") or "__pycache__" in n]


def test_the_installed_wheel_declares_what_it_imports(wheel_env):
    # Every runtime dependency the wheel declares is satisfied here, and the import package is the wheel's.
    code = """
import importlib.metadata as md, sys
from packaging.requirements import Requirement
import tuner, tuner.config.presets as presets
missing = []
for text in md.distribution("tunerlab").requires:
    req = Requirement(text)
    if req.marker and not req.marker.evaluate({"extra": ""}):
        continue
    try:
        if not req.specifier.contains(md.version(req.name), prereleases=True):
            missing.append(f"{req} (have {md.version(req.name)})")
    except md.PackageNotFoundError:
        missing.append(str(req))
print(missing)
print(tuner.__file__.startswith(sys.prefix), presets.BUILTIN_DIR.is_relative_to(sys.prefix))
"""
    out = subprocess.run(
        [wheel_env / "bin" / "python", "-c", code], capture_output=True, text=True, timeout=120, cwd="/"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["[]", "True True"]


@pytest.mark.slow
def test_the_installed_wheel_lists_trains_and_chats_from_any_folder(wheel_env, default_model_dir, tmp_path):
    folder = tmp_path / "somewhere"  # no checkout here: presets and data must come from the wheel
    folder.mkdir()
    listed = run(wheel_env, "list-presets", cwd=folder).stdout
    assert PRESET in listed and "qwen2_5_7b_instruct_qlora_oasst1_2048_e3" in listed

    run(wheel_env, "make-identity", "data/identity.jsonl", "--name", "Ada", cwd=folder)
    assert len((folder / "data/identity.jsonl").read_text().splitlines()) > 100

    # Two short steps, no evaluation answers: the install is under test here, not the learning.
    small = ("max_steps=2", "batch_size=1", "max_length=64", "evaluation_inputs=[]", "save_steps=100")
    steps = [arg for value in small for arg in ("--set", value)]
    trained = run(wheel_env, "train", PRESET, *steps, cwd=folder, timeout=600)
    assert "completed after 2 steps" in trained.stdout
    assert "encoding" in trained.stderr and "0/2 [" in trained.stderr  # progress from the start
    (run_dir,) = (folder / "work_dirs" / PRESET).iterdir()
    adapter = run_dir / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file()
    # Outputs follow the umask (022 here): others on the machine can read the run.
    assert (adapter.stat().st_mode & 0o777, (adapter / "adapter_config.json").stat().st_mode & 0o777) == (
        0o755,
        0o644,
    )

    chat = run(
        wheel_env,
        "chat",
        "default",
        "--adapter",
        str(run_dir),
        "--prompt",
        "Who are you?",
        "--max-new-tokens",
        "8",
        cwd=folder,
    )
    assert chat.stdout.strip()

    # The app serves its page from the wheel too.
    import socket
    import time
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = tmp_path / "app.log"  # a file, not a pipe: nobody reads a pipe while the app runs
    app = subprocess.Popen(
        [wheel_env / "bin" / "tuner", "app", "--port", str(port)],
        cwd=folder,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        deadline, page = time.time() + 120, ""
        while time.time() < deadline and not page and app.poll() is None:
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
            except OSError:
                time.sleep(1)
        assert '"title":"tuner"' in page, log.read_text()[-3000:]
    finally:
        app.terminate()
        app.wait(timeout=30)


def install_sh(*args: str, env: dict, cwd: Path = REPO) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CONDA_PREFIX", "PYTHON")}
    return subprocess.run(
        ["bash", REPO / "scripts" / "install.sh", *args],
        env={**clean, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.skipif(not SYSTEM_PYTHON.exists(), reason="no /usr/bin/python3 on this machine")
def test_on_the_system_python_install_sh_makes_a_venv_instead_of_touching_it(tmp_path, wheel):
    managed = list(Path("/usr/lib").glob("python3*/EXTERNALLY-MANAGED"))
    if managed:  # PEP 668: pip refuses to install into the system Python itself
        refused = subprocess.run(
            [SYSTEM_PYTHON, "-m", "pip", "install", "--dry-run", "--no-index", "--no-deps", wheel],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert refused.returncode != 0 and "externally-managed-environment" in refused.stderr
    venv = tmp_path / "venv"
    done = install_sh("--dry-run", env={"PYTHON": str(SYSTEM_PYTHON), "TUNER_VENV": str(venv)})
    assert done.returncode == 0, done.stderr
    assert f"making the virtual environment {venv} with /usr/bin/python3" in done.stderr
    assert "home = /usr/bin" in (venv / "pyvenv.cfg").read_text()
    assert f"would run: {venv}/bin/python -m pip install -q -c " in done.stdout
    if not shutil.which("nvidia-smi"):
        assert "no GPU: installing the CPU build" in done.stderr or "CPU build of torch from" in done.stderr
    # The venv takes what the system Python refuses.
    taken = subprocess.run(
        [venv / "bin" / "python", "-m", "pip", "install", "--dry-run", "--no-index", "--no-deps", wheel],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert taken.returncode == 0 and "Would install tunerlab-0.1.0" in taken.stdout, taken.stderr
    if os.environ.get("TUNER_TEST_FULL_INSTALL") == "1":
        full = install_sh(env={"PYTHON": str(SYSTEM_PYTHON), "TUNER_VENV": str(venv)})
        assert full.returncode == 0, full.stderr[-3000:]
        listed = subprocess.run(
            [venv / "bin" / "tuner", "list-presets"], capture_output=True, text=True, cwd=tmp_path
        )
        assert PRESET in listed.stdout


def test_an_active_environment_is_used_and_its_torch_kept(tmp_path):
    pytest.importorskip("torch")
    import torch

    link = tmp_path / "venv"
    done = install_sh("--dry-run", env={"VIRTUAL_ENV": sys.prefix, "TUNER_VENV": str(link)})
    assert done.returncode == 0, done.stderr
    assert link.is_symlink() and link.resolve() == Path(sys.prefix).resolve()
    assert f"torch {torch.__version__} is kept as it is" in done.stderr
    assert f"constraints: torch=={torch.__version__}" in done.stdout  # pip may not replace it
    assert "would run:" in done.stdout and "--index-url" not in done.stdout  # no torch download


def test_an_active_environment_never_replaces_a_venv_made_earlier(tmp_path):
    made = tmp_path / "venv"
    (made / "bin").mkdir(parents=True)
    (made / "bin" / "python").symlink_to(sys.executable)
    done = install_sh("--dry-run", env={"VIRTUAL_ENV": sys.prefix, "TUNER_VENV": str(made)})
    assert done.returncode == 1
    assert f"{made} is an environment made earlier by this script" in done.stderr
    assert (made / "bin" / "python").exists()  # untouched


def test_a_virtual_environment_first_on_path_is_used_though_not_activated(tmp_path):
    # A GPU image's python3 is often a venv of its own (/opt/torch/.venv on the device) that nobody
    # activated: a venv made from it would not see its CUDA torch, so install.sh installs into it.
    pytest.importorskip("torch")
    import torch

    image = tmp_path / "image-venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", image], check=True, timeout=120)
    link = tmp_path / "venv"
    path = f"{image / 'bin'}:{os.environ['PATH']}"
    done = install_sh("--dry-run", env={"PATH": path, "TUNER_VENV": str(link)})
    assert done.returncode == 0, done.stderr
    assert f"installing into the active environment {image}" in done.stderr
    assert link.is_symlink() and link.resolve() == image.resolve()
    assert f"torch {torch.__version__} is kept as it is" in done.stderr
