"""What the `zeroserve` command says when something is missing: which extra to install, as typed. Rich
reads `[quickstart]` in 'zeroserve[quickstart]' as markup and drops it, so every message that can hold
brackets is printed escaped."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from zeroserve import cli

ROOT = Path(__file__).resolve().parent.parent


def _without(*modules: str) -> str:
    """Python code that makes MODULES unimportable, as if their extra were not installed."""
    return f"import sys\nfor m in {modules!r}: sys.modules[m] = None\n"


@pytest.mark.parametrize(
    ("argv", "missing", "message"),
    [
        (
            ["operator"],
            "kopf",
            "zeroserve operator needs the operator extra: pip install 'zeroserve[operator]'",
        ),
        (["serve"], "pydantic", "zeroserve serve needs the runtime extra: pip install 'zeroserve[runtime]'"),
        (
            ["bench", "b.yaml"],
            "rich",
            "zeroserve bench needs the loadgen extra: pip install 'zeroserve[loadgen]'",
        ),
        (
            ["install"],
            "pyhelm3",
            "zeroserve install needs the install extra: pip install 'zeroserve[install]'",
        ),
    ],
)
def test_a_subcommand_without_its_extra_names_the_extra(argv: list[str], missing: str, message: str) -> None:
    code = _without(missing) + f"from zeroserve.cli import main\nsys.exit(main({argv!r}))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr == f"{message} ({missing} is not installed)\n"


def test_help_needs_no_extra() -> None:
    code = (
        _without("pydantic", "rich", "kopf", "yaml", "numpy")
        + "from zeroserve.cli import main\nmain(['--help'])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert "serve" in out.stdout and "operator" in out.stdout and "bench" in out.stdout


def test_a_missing_zeroserve_module_is_not_blamed_on_an_extra() -> None:
    assert cli.missing_extra("serve", ModuleNotFoundError(name="zeroserve_runtime.x")) is None
    assert cli.missing_extra("serve", ModuleNotFoundError(name="boto3")) == (
        "zeroserve serve needs the s3 extra: pip install 'zeroserve[s3]' (boto3 is not installed)"
    )


def _zeroserve(code: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """`zeroserve ARGV` after CODE, in a process of its own: the load generator patches the process
    with gevent on import."""
    main = f"from zeroserve.cli import main\nsys.exit(main({list(argv)!r}))"
    return subprocess.run(
        [sys.executable, "-c", "import sys\n" + code + main], capture_output=True, text=True, timeout=120
    )


def _words(text: str) -> str:
    return " ".join(text.split())  # rich wraps long lines


def test_quickstart_without_its_extra_prints_the_extra_as_typed(tmp_path: Path) -> None:
    done = _zeroserve(_without("skl2onnx"), "quickstart", "--out", str(tmp_path))
    assert done.returncode == 1, done.stderr
    assert _words(
        "quickstart failed: the quickstart needs skl2onnx: pip install 'zeroserve[quickstart]' "
        f"(make quickstart does); logs in {tmp_path / 'work'}"
    ) in _words(done.stdout)


def test_bench_errors_print_brackets_as_typed(tmp_path: Path) -> None:
    bench = tmp_path / "bench[aws].yaml"
    bench.write_text("targets: not a list\n")
    done = _zeroserve("", "bench", str(bench))
    assert done.returncode == 2, done.stderr
    assert f"error: {bench}: " in _words(done.stdout)
