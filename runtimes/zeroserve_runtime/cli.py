"""`zeroserve serve`: the runtime. Flags mirror the ZEROSERVE_* settings one for one (pydantic-settings
parses both), and a flag wins over its environment variable."""

from __future__ import annotations

import argparse
import sys


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve an ONNX model over the Open Inference Protocol v2 (REST and gRPC)",
        add_help=False,  # --help is answered by the settings parser, which knows every flag
    )
    p.set_defaults(func=run, passthrough=True)
    f = subparsers.add_parser(
        "fetch",
        help="fetch and verify a model into a Triton model repository (Triton's init container)",
        add_help=False,
    )
    f.set_defaults(func=run_fetch, passthrough=True)


def _settings_errors(command: str, error) -> int:  # type: ignore[no-untyped-def]
    for e in error.errors(include_url=False):
        field = str(e["loc"][0]) if e["loc"] else "?"
        flag, env = "--" + field.replace("_", "-"), "ZEROSERVE_" + field.upper()
        print(f"zeroserve {command}: {flag} ({env}): {e['msg']}", file=sys.stderr)
    return 2


def run_fetch(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from zeroserve_runtime.errors import ModelLoadError
    from zeroserve_runtime.fetch import FetchSettings, fill_repository

    try:
        settings = FetchSettings(_cli_parse_args=args.extra)  # type: ignore[call-arg]
    except ValidationError as e:
        return _settings_errors("fetch", e)
    try:
        fill_repository(settings)
    except ModelLoadError as e:
        # The last line of the log: what the pod's termination message, and so the ModelService, says.
        print(f"zeroserve fetch: {e}", file=sys.stderr)
        return 1
    return 0


def run(args: argparse.Namespace) -> int:
    import time

    from pydantic import ValidationError

    from zeroserve_runtime.coldstart import ModelLoader, process_start_time
    from zeroserve_runtime.settings import RuntimeSettings

    started_at = process_start_time()
    try:
        settings = RuntimeSettings(_cli_parse_args=args.extra)  # type: ignore[call-arg]
    except ValidationError as e:
        return _settings_errors("serve", e)
    # The model loads while the web stack imports: both are most of a cold start.
    loader = ModelLoader(settings, started_at)
    loader.start()
    from zeroserve_runtime.server import serve

    return serve(settings, loader, time.time())
