"""The `zeroserve` command. Each subcommand lives with the component it drives and registers here."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from zeroserve import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zeroserve",
        description="Self-hosted serverless model serving on Kubernetes.",
    )
    parser.add_argument("--version", action="version", version=f"zeroserve {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    # Each component adds its own subcommands; imports stay light so `--help` is fast.
    from zeroserve_loadgen import cli as loadgen_cli
    from zeroserve_operator import cli as operator_cli
    from zeroserve_runtime import cli as runtime_cli

    from zeroserve import install, quickstart

    quickstart.add_parser(subparsers)
    runtime_cli.add_parser(subparsers)
    operator_cli.add_parser(subparsers)
    install.add_parsers(subparsers)
    loadgen_cli.add_parsers(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    if args_in[:1] == ["serve"]:
        # The runtime's cold start is on the clock from process start: skip building every other
        # subcommand's parser (and what they import) on the way to it.
        from zeroserve_runtime import cli as runtime_cli

        return runtime_cli.run(argparse.Namespace(extra=args_in[1:]))
    parser = build_parser()
    args, extra = parser.parse_known_args(args_in)
    if extra and not getattr(args, "passthrough", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    if args.command is None:
        parser.print_help()
        return 0
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
