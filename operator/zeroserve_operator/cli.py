"""`zeroserve operator`: runs the handlers that `kopf run -m zeroserve_operator.handlers` runs."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "operator",
        help="run the ModelService operator against the current kube context",
        description="Reconcile ModelServices into Knative Services. Settings also come from "
        "ZEROSERVE_OPERATOR_* environment variables.",
    )
    scope = p.add_mutually_exclusive_group()
    scope.add_argument(
        "--namespace", "-n", action="append", default=[], help="watch this namespace (repeatable)"
    )
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace (default)")
    p.add_argument("--liveness", default="http://0.0.0.0:8081/healthz", help="kopf liveness endpoint URL")
    p.add_argument("--metrics-port", type=int, help="port of /metrics (default 9090, 0 turns it off)")
    p.add_argument("--verbose", "-v", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import kopf

    from zeroserve_operator import handlers

    handlers.watched_namespaces = list(args.namespace)
    if args.metrics_port is not None:
        handlers.operator_settings.metrics_port = args.metrics_port
    kopf.configure(verbose=args.verbose)
    # One replica, no peering: kopf's peering CRDs are not installed, and standalone needs none.
    kopf.run(
        standalone=True,
        namespaces=args.namespace,
        clusterwide=not args.namespace,
        liveness_endpoint=args.liveness or None,
    )
    return 0
