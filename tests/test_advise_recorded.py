"""The simulator held to real Knative: runs of `bench/advise_knative.py --keep NAME` on the test cluster
(the arrivals sent, the runtime's profile, the cluster's pod start and room, and the cold starts and
replica-seconds counted) are kept in tests/data/advise-knative/ and predicted again by today's simulator.
A change to it that loses agreement with a measured run fails here, within the goals `zeroserve advise
--validate` judges by (cold starts within 10%, replica-seconds within 20%)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from zeroserve.advise.validate_knative import COLD_TOLERANCE, REPLICA_SECONDS_TOLERANCE, repredict

RECORDS = Path(__file__).resolve().parent / "data" / "advise-knative"
KEPT = sorted(RECORDS.glob("*.json"))


def test_measured_knative_runs_are_kept() -> None:
    assert len(KEPT) >= 2, f"expected recorded runs in {RECORDS}: bench/advise_knative.py --keep NAME"


@pytest.mark.parametrize("path", KEPT, ids=[p.stem for p in KEPT])
def test_the_simulator_predicts_a_measured_knative_run_within_the_goals(path: Path) -> None:
    kept = json.loads(path.read_text())
    measured = kept["measured"]
    predicted = repredict(kept)
    cold = predicted.sim.cold_starts
    seconds = predicted.replica_seconds
    print(
        f"{path.stem}: cold starts {cold:.2f} predicted / {measured['cold_starts']} measured; "
        f"replica-seconds {seconds:.0f} / {measured['replica_seconds']:.0f}"
    )
    assert abs(cold / measured["cold_starts"] - 1) <= COLD_TOLERANCE, (cold, measured["cold_starts"])
    assert abs(seconds / measured["replica_seconds"] - 1) <= REPLICA_SECONDS_TOLERANCE, (
        seconds,
        measured["replica_seconds"],
    )
