"""How fast does the operator converge on many ModelServices, and how much memory does it take?

Starts the test control plane and the operator (`zeroserve operator`, a real process), creates N
ModelServices as fast as the API server takes them, and measures the time until every one has its
Knative Service and status.observedGeneration == metadata.generation, plus the operator's peak RSS.

    .venv/bin/python bench/operator_scale.py [--count 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from controlplane import Binaries, ControlPlane
from kubernetes_asyncio import client as aclient
from kubernetes_asyncio import config as aconfig
from kubernetes_asyncio.client.rest import ApiException
from operatorproc import OperatorProcess
from zeroserve_operator import api, crd

GOAL_SECONDS, GOAL_MB = 60.0, 200.0
NAMESPACE = "bench"


def rss_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/{pid}/status")


def modelservice(i: int) -> dict:
    return {
        "apiVersion": f"{api.GROUP}/{api.VERSION}",
        "kind": api.KIND,
        "metadata": {"name": f"model-{i:04d}"},
        "spec": {
            "model": {"uri": f"s3://models/m{i}.onnx"},
            "scaling": {"maxReplicas": 1 + i % 10, "containerConcurrency": 8},
        },
    }


async def run(plane: ControlPlane, proc: OperatorProcess, count: int) -> dict[str, float]:
    api_client = await aconfig.new_client_from_config(config_file=str(plane.kubeconfig))
    async with api_client:
        custom = aclient.CustomObjectsApi(api_client)
        await aclient.CoreV1Api(api_client).create_namespace(
            aclient.V1Namespace(metadata=aclient.V1ObjectMeta(name=NAMESPACE))
        )
        gate = asyncio.Semaphore(32)

        async def create(i: int) -> None:
            async with gate:
                for _ in range(20):
                    try:
                        await custom.create_namespaced_custom_object(
                            api.GROUP, api.VERSION, NAMESPACE, api.PLURAL, modelservice(i)
                        )
                        return
                    except ApiException as e:
                        # The API server's way of saying "not yet" (e.g. storage still initializing).
                        if e.status != 429:
                            raise
                        await asyncio.sleep(float((e.headers or {}).get("Retry-After", 1)))
                raise RuntimeError(f"ModelService {i}: still 429 after 20 tries")

        t0 = time.monotonic()
        await asyncio.gather(*(create(i) for i in range(count)))
        created = time.monotonic() - t0
        print(f"created {count} ModelServices in {created:.1f}s", flush=True)

        peak_sampled = 0.0
        while True:
            peak_sampled = max(peak_sampled, rss_mb(proc.process.pid, "VmRSS"))  # type: ignore[union-attr]
            items = (
                await custom.list_namespaced_custom_object(api.GROUP, api.VERSION, NAMESPACE, api.PLURAL)
            )["items"]
            done = sum(
                1
                for ms in items
                if (ms.get("status") or {}).get("observedGeneration") == ms["metadata"]["generation"]
            )
            ksvcs = len(
                (
                    await custom.list_namespaced_custom_object(
                        "serving.knative.dev", "v1", NAMESPACE, "services"
                    )
                )["items"]
            )
            elapsed = time.monotonic() - t0
            print(
                f"  {elapsed:5.1f}s  status current {done:4d}/{count}  ksvcs {ksvcs:4d}/{count}", flush=True
            )
            if done == count and ksvcs == count:
                break
            if elapsed > 600:
                raise SystemExit("gave up after 600s")
            await asyncio.sleep(1)
        converged = time.monotonic() - t0
        return {
            "created": created,
            "converged": converged,
            "peak_rss_mb": rss_mb(proc.process.pid, "VmHWM"),  # type: ignore[union-attr]
            "rss_now_mb": rss_mb(proc.process.pid, "VmRSS"),  # type: ignore[union-attr]
        }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="zeroserve-bench-") as tmp:
        with ControlPlane(Binaries.from_cache(), Path(tmp) / "plane") as plane:
            plane.apply_crds([crd.CRD_FILE])
            proc = OperatorProcess(plane, Path(tmp) / "operator.log", [NAMESPACE])
            proc.argv = [a for a in proc.argv if a != "--verbose"]
            with proc:
                idle_mb = rss_mb(proc.process.pid, "VmRSS")  # type: ignore[union-attr]
                result = asyncio.run(run(plane, proc, args.count))
            errors = [line for line in proc.log().splitlines() if "[ERROR" in line]
    print(f"\n{args.count} ModelServices, operator as one process on this machine")
    print(f"  all created (API server accepted)  {result['created']:6.1f}s")
    print(
        f"  all converged (ksvc + status)       {result['converged']:6.1f}s   goal {GOAL_SECONDS:.0f}s "
        f"({result['converged'] / GOAL_SECONDS:.0%} of it)"
    )
    print(f"  throughput                          {args.count / result['converged']:6.1f} ModelServices/s")
    peak = result["peak_rss_mb"]
    print(
        f"  operator RSS idle / now / peak      {idle_mb:.0f} / {result['rss_now_mb']:.0f} / {peak:.0f} MB   "
        f"goal {GOAL_MB:.0f} MB ({peak / GOAL_MB:.0%} of it)"
    )
    print(f"  ERROR lines in the operator log     {len(errors)}")
    for line in errors[:5]:
        print(f"    {line[:300]}")
    met = result["converged"] <= GOAL_SECONDS and result["peak_rss_mb"] <= GOAL_MB
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
