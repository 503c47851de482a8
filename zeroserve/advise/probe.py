"""`python -m zeroserve.advise.probe SPEC.json`: the function handler's init and service time, measured
in a process of its own (started inside the profile's CPU quota). It loads the model exactly as Lambda's
init phase and the Cloud Function do (`functions.core.get_app`), then calls the handler in process.
Prints one JSON line: init_s (process start to ready), init_phases (import, fetch, load, warmup, total, as
the runtime's cold-start metric has them) and service_s per batch size."""

from __future__ import annotations

import json
import sys
import time


def main(spec_path: str) -> int:
    from zeroserve_runtime.functions.core import get_app

    app = get_app()
    spec = json.loads(open(spec_path).read())
    headers = {"content-type": "application/json"}
    path = f"/v2/models/{app.name}/infer"
    service: dict[str, list[float]] = {}
    for batch, body_text in spec["bodies"].items():
        body = body_text.encode()
        times: list[float] = []
        for k in range(spec["n"] + 3):
            t0 = time.perf_counter()
            status, _, out = app.handle("POST", path, headers, body, t0)
            elapsed = time.perf_counter() - t0
            if status != 200:
                print(out.decode(errors="replace")[:300], file=sys.stderr)
                return 1
            if k >= 3:
                times.append(elapsed)
                if sum(times) > spec["max_s"] and len(times) >= 5:
                    break
            time.sleep(spec["gap_s"])
        service[batch] = times
    print(json.dumps({"init_s": app.init_seconds, "init_phases": app.init_phases, "service_s": service}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
