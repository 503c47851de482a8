"""`zeroserve quickstart`, the README's first command, end to end as a user runs it: a real model, three
real local targets, a real bursty run, a report, a ModelService the API server accepts, and nothing left
running afterwards, also after Ctrl-C."""

from __future__ import annotations

import csv
import json
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ZEROSERVE = str(Path(sys.executable).parent / "zeroserve")
URL = re.compile(r"^\s+(zeroserve|gcf|lambda)\s+\S+\s+(http://127\.0\.0\.1:(\d+))$", re.M)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _ports(stdout: str) -> dict[str, int]:
    return {name: int(port) for name, _, port in URL.findall(stdout)}


@pytest.mark.controlplane
def test_quickstart_end_to_end(tmp_path: Path, control_plane, modelservice_crd, namespace: str) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "qs"
    started = time.monotonic()
    # A relative --out, run from its parent, as `make quickstart` does from the repository.
    result = subprocess.run(
        [ZEROSERVE, "quickstart", "--out", "qs", "--duration", "6"],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    text = result.stdout
    assert elapsed < 120, f"the quickstart took {elapsed:.0f} s"

    # Every target classified the held-out digits exactly as scikit-learn did.
    accuracy = re.findall(r"^\s+(\w+)\s+accuracy (\d+\.\d)%, identical to scikit-learn", text, re.M)
    assert {name for name, _ in accuracy} == {"zeroserve", "gcf", "lambda"}
    assert all(float(acc) > 90 for _, acc in accuracy)

    report = json.loads((out / "report.json").read_text())
    targets = {t["name"]: t for t in report["targets"]}
    assert set(targets) == {"zeroserve", "gcf", "lambda"}
    for name, t in targets.items():
        assert t["requests"] > 10 and t["success_ratio"] == 1.0, (name, t["errors"])
    samples = list(csv.DictReader((out / "samples.csv").open()))
    for name, t in targets.items():
        # Each fresh process flags its first answer and bills its init with it, once...
        (first,) = [s for s in samples if s["target"] == name and s["cold"] == "True"]
        assert float(first["init_s"]) > 0, name
        # ...but the readiness check had started it ahead of the bench: the report counts it as a cold
        # start only if it came within the default 2 s of ready, as a request held for the start would.
        waited = float(first["ready_age_s"]) <= 2.0
        assert t["cold_by_header"] == int(waited), (name, first["ready_age_s"])
        assert t["cost_per_1m_usd"] > 0
    assert {t["kind"] for t in targets.values()} == {"oip-rest", "gcf", "lambda-url"}
    assert (out / "report.html").stat().st_size > 10_000
    assert "$/1M inf" in text and "report.html" in text

    # It ends advising on the same model and load, in seconds: a winner, and the file to re-run it.
    advice = json.loads((out / "advise" / "advice.json").read_text())
    assert advice["winner"]["meets"] and advice["model"]["sha256"] in text
    assert "re-run it: zeroserve advise" in text and (out / "advise.yaml").is_file()
    step = re.search(r"\[7/7\] zeroserve advise.*?done in (\d+\.\d) s", text, re.S)
    assert step and float(step.group(1)) < 30, "the advise step should take seconds"
    # The re-run command it prints works as printed, from where the quickstart ran.
    rerun = re.search(r"re-run it: (zeroserve advise \S+)", text)
    assert rerun, text[-2000:]
    again = subprocess.run(
        [ZEROSERVE, *rerun.group(1).split()[1:], "--out", "again"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert json.loads((tmp_path / "again" / "advice.json").read_text())["winner"]["meets"]

    # The bench file it wrote runs again as is.
    bench = yaml.safe_load((out / "bench.yaml").read_text())
    assert [t["name"] for t in bench["targets"]] == ["zeroserve", "gcf", "lambda"]

    # The printed ModelService is accepted by the real API server with the real CRD, as the user applies it.
    manifest = yaml.safe_load((out / "modelservice.yaml").read_text())
    assert manifest["spec"]["model"]["sha256"] in text
    applied = control_plane.kubectl(
        "apply", "-n", namespace, "-f", str(out / "modelservice.yaml"), "-o", "json"
    )
    created = json.loads(applied.stdout)
    assert created["spec"]["scaling"]["minReplicas"] == 0, "scale to zero by default"

    # Nothing it started is still listening.
    ports = _ports(text)
    assert set(ports) == {"zeroserve", "gcf", "lambda"}
    assert not [name for name, port in ports.items() if _listening(port)]


def test_quickstart_cleans_up_on_ctrl_c(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [ZEROSERVE, "quickstart", "--out", str(tmp_path / "qs"), "--duration", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    seen = ""
    deadline = time.monotonic() + 120
    while "bursty load" not in seen:
        line = proc.stdout.readline()
        assert line or proc.poll() is None, seen
        seen += line
        assert time.monotonic() < deadline, seen
    ports = _ports(seen)
    assert len(ports) == 3 and all(_listening(p) for p in ports.values())
    time.sleep(2)
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130, seen + rest
    assert "interrupted" in rest
    assert not [name for name, port in ports.items() if _listening(port)]
