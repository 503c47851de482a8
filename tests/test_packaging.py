"""The layout keeps its promise: no top-level folder shadows a standard-library module."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_no_top_level_folder_is_a_package() -> None:
    for folder in ("operator", "runtimes", "loadgen", "tests", "crds", "charts"):
        assert not (ROOT / folder / "__init__.py").exists(), f"{folder}/ must not be importable"


def test_operator_is_still_the_standard_library_with_the_repo_root_on_sys_path() -> None:
    code = "import operator, zeroserve_operator; print(operator.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert Path(out.stdout.strip()).parent == Path(sysconfig.get_paths()["stdlib"])


def test_console_script_runs() -> None:
    out = subprocess.run(
        [Path(sys.executable).parent / "zeroserve", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "usage: zeroserve" in out and "operator" in out
