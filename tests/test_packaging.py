"""The layout keeps its promise: no top-level folder shadows a standard-library module."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

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


def test_wheel_carries_the_chart_with_the_crd_itself(tmp_path: Path) -> None:
    import zipfile

    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("zeroserve-*.whl")
    prefix = "zeroserve-0.1.0.data/data/share/zeroserve/charts/zeroserve/"
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        for required in ("Chart.yaml", "values.yaml", "values.schema.json", "templates/deployment.yaml"):
            assert prefix + required in names
        crd = z.read(prefix + "crds/modelservices.zeroserve.dev.yaml")
    assert crd == (ROOT / "crds" / "modelservices.zeroserve.dev.yaml").read_bytes()


def test_install_uses_the_checkouts_chart_else_the_installed_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from zeroserve import install

    assert install.bundled_chart() == ROOT / "charts" / "zeroserve"
    monkeypatch.setattr(install, "SOURCE_CHART", tmp_path / "no-chart-here")
    assert install.bundled_chart() == install.INSTALLED_CHART
