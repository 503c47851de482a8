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


def run(args: argparse.Namespace) -> int:
    import time

    from pydantic import ValidationError

    from zeroserve_runtime.coldstart import ModelLoader, process_start_time
    from zeroserve_runtime.settings import RuntimeSettings

    started_at = process_start_time()
    try:
        settings = RuntimeSettings(_cli_parse_args=args.extra)  # type: ignore[call-arg]
    except ValidationError as e:
        for error in e.errors(include_url=False):
            field = str(error["loc"][0]) if error["loc"] else "?"
            flag, env = "--" + field.replace("_", "-"), "ZEROSERVE_" + field.upper()
            print(f"zeroserve serve: {flag} ({env}): {error['msg']}", file=sys.stderr)
        return 2
    # The model loads while the web stack imports: both are most of a cold start.
    loader = ModelLoader(settings, started_at)
    loader.start()
    from zeroserve_runtime.server import serve

    return serve(settings, loader, time.time())
