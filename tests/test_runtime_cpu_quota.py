"""The runtime sizes its inference threads from its cgroup's CPU quota (a pod's CPU limit), on cgroup v1 as on
v2: this machine is v1, as is the test node, and there a 1-CPU pod that runs one thread per core spends the
end of every quota period throttled."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from zeroserve.advise.profile import CpuQuota

PROBE = "from zeroserve_runtime.settings import available_cpus; print(available_cpus())"


def _cpus(wrap: object = None) -> int:
    argv = [sys.executable, "-c", PROBE]
    argv = wrap(argv) if callable(wrap) else argv
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60)
    return int(out.stdout.strip())


@pytest.mark.parametrize("vcpu", [1.0, 0.5])
def test_a_cgroup_cpu_quota_caps_the_cpus_the_runtime_uses(vcpu: float) -> None:
    cores = len(os.sched_getaffinity(0))
    if cores < 2:
        pytest.fail("needs 2 or more CPUs to tell a 1-CPU quota from the machine", pytrace=False)
    assert _cpus() == cores
    with CpuQuota(vcpu, f"cpus-{vcpu:g}") as quota:
        assert _cpus(quota.wrap) == 1
