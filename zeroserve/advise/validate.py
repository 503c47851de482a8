"""`zeroserve advise --validate`: the predictions checked against real runs. Locally
(validate_local.py), each platform's pick as one process under the profile's CPU quota; on a cluster
(validate_knative.py), the Knative pick as a real ModelService. What both share is here."""

from __future__ import annotations

from typing import Any


class ValidateError(RuntimeError):
    pass


def shortened(workload: Any, duration: float) -> Any:
    """The same workload (and seed) cut to `duration` seconds."""
    if hasattr(workload, "duration_s"):
        return type(workload).model_validate({**workload.model_dump(), "duration_s": duration})
    return workload
