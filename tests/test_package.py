"""The wheel built from the repository is the whole package: built and installed (not editable) once per
session, it holds every file of engine/ loaders/ cache/ as umt.*, and its console scripts run from it."""
from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import torch

from umt.engine.cli import main as train_main

REPO = Path(__file__).resolve().parents[1]
TOP = ("engine", "loaders", "cache")
SCRIPTS = ("umt-data", "umt-cache", "umt-train", "umt-guide")


@pytest.fixture(scope="session")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(wheel, DIR): the wheel built from a clean copy of the sources (no stale build/ or __pycache__) with
    this environment's setuptools, and that wheel installed into DIR with `pip install --target`."""
    root = tmp_path_factory.mktemp("package")
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "setup.cfg", "README.md"):  # the build's inputs, where present
        if (REPO / name).exists():
            shutil.copy(REPO / name, src / name)
    for top in TOP:
        shutil.copytree(REPO / top, src / top, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(root / "wheel"),
                    str(src)], check=True, timeout=120)
    wheel, = (root / "wheel").glob("umt-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(root / "site"), str(wheel)],
                   check=True, timeout=120)
    return wheel, root / "site"


def _source_files() -> set[str]:
    """Every file under the three top-level folders, named as it lands in the wheel (umt/<top>/...)."""
    return {f"umt/{path.relative_to(REPO).as_posix()}" for top in TOP for path in (REPO / top).rglob("*")
            if path.is_file() and "__pycache__" not in path.parts}


def test_the_wheel_holds_every_module_and_data_file_under_umt_and_nothing_else(installed):
    wheel, _ = installed
    names = zipfile.ZipFile(wheel).namelist()
    packaged = {n for n in names if not n.startswith("umt-0")}  # the dist-info aside
    assert packaged == _source_files()  # umt/engine/methods/* included; no bare engine/ or cache/ package
    assert "umt/engine/methods/mla.py" in packaged


def _installed_env(site: Path) -> dict[str, str]:
    """Python run with -S reads no .pth file, so the venv's editable finder for umt cannot shadow DIR."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), sysconfig.get_paths()["purelib"]]),
            "OMP_NUM_THREADS": str(torch.get_num_threads())}  # same threads as this process: bitwise comparison


def test_console_scripts_run_from_the_installed_copy_and_train_as_the_source_tree_does(installed, tmp_path):
    _, site = installed
    env = _installed_env(site)
    py = [sys.executable, "-S"]
    # every script's --help, and where umt is imported from, in parallel
    helps = {name: subprocess.Popen([*py, str(site / "bin" / name), "--help"], env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True) for name in SCRIPTS}
    where = subprocess.Popen([*py, "-c", "import umt.engine.methods, umt.loaders, umt.cache; "
                              "print(umt.engine.__file__, umt.engine.methods.__file__, umt.cache.__file__)"],
                             env=env, stdout=subprocess.PIPE, text=True)

    def script(name: str, *args: str) -> None:
        subprocess.run([*py, str(site / "bin" / name), *args], env=env, check=True, timeout=120,
                       stdout=subprocess.DEVNULL)

    raw, packed = tmp_path / "raw", tmp_path / "packed"
    script("umt-data", "synth-arrays", str(raw), "--train", "48", "--val", "16", "--test", "16", "--dim", "4",
           "--classes", "3")
    script("umt-data", "pack-arrays", f"--view=vfeat={raw / 'vfeat.npy'}", f"--view=afeat={raw / 'afeat.npy'}",
           "--labels", str(raw / "labels.csv"), "--out", str(packed), "--shard-size", "16")
    run = ["--data", str(packed), "--method", "joint", "--modality", "vfeat", "--modality", "afeat", "--width", "4",
           "--batch-size", "16", "--workers", "0", "--no-probe", "--epochs", "1", "--log-with", "none"]
    script("umt-train", *run, "--out", str(tmp_path / "installed"))
    train_main([*run, "--out", str(tmp_path / "source")])

    for name, proc in helps.items():
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0 and out.startswith(f"usage: {name}"), (name, out)
    paths, _ = where.communicate(timeout=120)
    assert where.returncode == 0
    for path in paths.split():
        assert Path(path).is_relative_to(site), path  # the installed copy, not the editable source tree
    installed_state, source_state = (torch.load(tmp_path / run_dir / "model.pt", weights_only=True)["state_dict"]
                                     for run_dir in ("installed", "source"))
    assert installed_state.keys() == source_state.keys()
    for name in source_state:
        assert torch.equal(installed_state[name], source_state[name]), name


def _imported_packages(path: Path) -> set[str]:
    """The umt packages (engine, loaders, cache) a module imports, at the top or inside a function."""
    top = path.relative_to(REPO).parts[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [f"umt.{top}" if node.level else node.module or ""]  # relative: its own package (no umt.x above)
        else:
            continue
        found |= {name.split(".")[1] for name in names if name.startswith("umt.") and name.count(".") >= 1}
    return found


def test_the_packages_import_one_way_loaders_then_engine_then_cache():
    """loaders ← engine ← cache: no module of loaders imports engine or cache, none of engine imports cache."""
    below = {"loaders": set(), "engine": {"loaders"}, "cache": {"loaders", "engine"}}
    wrong = {f"{path.relative_to(REPO)} imports umt.{used}" for top, allowed in below.items()
             for path in (REPO / top).rglob("*.py") for used in _imported_packages(path) - allowed - {top}}
    assert not wrong
