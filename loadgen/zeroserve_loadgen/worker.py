"""`python -m zeroserve_loadgen.worker`: a locust worker process for a distributed bench run."""

from __future__ import annotations

import argparse
import sys

from zeroserve_loadgen.runner import run_worker


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="zeroserve-bench-worker")
    parser.add_argument("--master-host", required=True)
    parser.add_argument("--master-port", type=int, default=5557)
    args = parser.parse_args(argv)
    return run_worker(args.master_host, args.master_port)


if __name__ == "__main__":
    sys.exit(main())
