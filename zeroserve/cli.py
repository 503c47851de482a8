"""The `zeroserve` command. Each subcommand lives with the component it drives and registers here."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Callable, Sequence

from zeroserve import __version__

# The extra that brings each subcommand's dependencies (pyproject.toml): `pip install zeroserve` alone
# starts the command but serves, operates and benchmarks nothing.
COMMAND_EXTRAS = {
    "serve": "runtime",
    "operator": "operator",
    "bench": "loadgen",
    "bench-worker": "loadgen",
    "install": "install",
    "uninstall": "install",
    "quickstart": "quickstart",
    "advise": "advise",
}
# Modules that an optional feature of a subcommand imports only when used, with the extra that has them.
MODULE_EXTRAS = {
    "boto3": "s3",
    "google": "gcs",
    "botocore": "aws",
    "functions_framework": "functions",
    "awslambdaric": "functions",
    "sklearn": "quickstart",
    "skl2onnx": "quickstart",
}


def missing_extra(command: str, error: ModuleNotFoundError) -> str | None:
    """What to install when COMMAND stops on a third-party module that is not installed, else None: a
    zeroserve module missing is a broken install, not a missing extra."""
    module = (error.name or "").partition(".")[0]
    if not module or module.startswith("zeroserve") or command not in COMMAND_EXTRAS:
        return None
    extra = MODULE_EXTRAS.get(module, COMMAND_EXTRAS[command])
    return (
        f"zeroserve {command} needs the {extra} extra: pip install 'zeroserve[{extra}]' "
        f"({module} is not installed)"
    )


def _run(command: str, func: Callable[[argparse.Namespace], int | None], args: argparse.Namespace) -> int:
    try:
        return int(func(args) or 0)
    except ModuleNotFoundError as e:
        message = missing_extra(command, e)
        if message is None:
            raise
        print(message, file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zeroserve",
        description="Self-hosted serverless model serving on Kubernetes.",
    )
    parser.add_argument("--version", action="version", version=f"zeroserve {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    # Each component adds its own subcommands; imports stay light so `--help` is fast. An image holds
    # only its own component's code (runtimes/onnx/Dockerfile), so an absent one is skipped.
    for module, register in (
        ("zeroserve.quickstart", "add_parser"),
        ("zeroserve.advise.cli", "add_parser"),
        ("zeroserve_runtime.cli", "add_parser"),
        ("zeroserve_operator.cli", "add_parser"),
        ("zeroserve.install", "add_parsers"),
        ("zeroserve_loadgen.cli", "add_parsers"),
    ):
        try:
            component = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module.partition(".")[0]:
                raise
            continue
        getattr(component, register)(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    # An image holding another component only (operator/Dockerfile) has no serve: the parser says so.
    if args_in[:1] == ["serve"] and importlib.util.find_spec("zeroserve_runtime") is not None:
        # The runtime's cold start is on the clock from process start: skip building every other
        # subcommand's parser (and what they import) on the way to it.
        from zeroserve_runtime import cli as runtime_cli

        return _run("serve", runtime_cli.run, argparse.Namespace(extra=args_in[1:]))
    parser = build_parser()
    args, extra = parser.parse_known_args(args_in)
    if extra and not getattr(args, "passthrough", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    if args.command is None:
        parser.print_help()
        return 0
    return _run(args.command, args.func, args)


if __name__ == "__main__":
    sys.exit(main())
