"""`zeroserve install` / `zeroserve uninstall`: the Helm chart into the current kube context, via pyhelm3."""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
from pathlib import Path
from typing import Any

RELEASE = "zeroserve"
SOURCE_CHART = Path(__file__).resolve().parent.parent / "charts" / "zeroserve"
# Where the wheel puts the chart (data-files in pyproject.toml).
INSTALLED_CHART = Path(sys.prefix) / "share" / "zeroserve" / "charts" / "zeroserve"


def bundled_chart() -> Path:
    """The chart of this checkout when running from source, else the one installed with the package."""
    return SOURCE_CHART if (SOURCE_CHART / "Chart.yaml").is_file() else INSTALLED_CHART


def add_parsers(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    install = subparsers.add_parser("install", help="install or upgrade Zeroserve with Helm")
    install.add_argument(
        "--values", "-f", type=Path, action="append", default=[], help="values file (repeatable)"
    )
    uninstall = subparsers.add_parser("uninstall", help="remove the Zeroserve Helm release (the CRD stays)")
    for p in (install, uninstall):
        p.add_argument(
            "--namespace", "-n", default="zeroserve", help="release namespace (default: zeroserve)"
        )
        p.add_argument("--release", default=RELEASE, help=f"release name (default: {RELEASE})")
        p.add_argument("--helm", default=os.environ.get("ZEROSERVE_HELM", "helm"), help="helm executable")
        p.add_argument("--kubeconfig", type=Path, default=None, help="kubeconfig (default: helm's own)")
    install.add_argument(
        "--chart", type=Path, default=None, help="chart directory (default: the bundled one)"
    )
    install.set_defaults(func=run_install)
    uninstall.set_defaults(func=run_uninstall)


def _client(args: argparse.Namespace) -> Any:
    from pyhelm3 import Client

    helm = shutil.which(args.helm)
    if helm is None:
        raise SystemExit(f"zeroserve: helm not found ({args.helm}); install Helm 3 or pass --helm PATH")
    return Client(executable=helm, kubeconfig=args.kubeconfig)


def _values(files: list[Path]) -> list[dict[str, Any]]:
    import yaml

    values = []
    for path in files:
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise SystemExit(f"zeroserve: cannot read values file {path}: {e}") from None
        if not isinstance(loaded, dict):
            raise SystemExit(f"zeroserve: values file {path} must hold a mapping")
        values.append(loaded)
    return values


def _step(message: str) -> None:
    print(f"==> {message}", flush=True)


def run_install(args: argparse.Namespace) -> int:
    chart_dir = args.chart or bundled_chart()
    if not (chart_dir / "Chart.yaml").is_file():
        raise SystemExit(f"zeroserve: no Helm chart at {chart_dir}; pass --chart DIR")
    values = _values(args.values)
    # Outside the try below: without pyhelm3 the command says which extra to install.
    client = _client(args)

    async def install() -> Any:
        _step(f"loading chart {chart_dir}")
        chart = await client.get_chart(chart_dir)
        _step(f"installing or upgrading release {args.release} in namespace {args.namespace}")
        return await client.install_or_upgrade_release(
            args.release, chart, *values, namespace=args.namespace, create_namespace=True
        )

    try:
        revision = asyncio.run(install())
    except Exception as e:  # pyhelm3 raises its own error types carrying helm's stderr
        print(f"zeroserve: install failed: {e}", file=sys.stderr)
        return 1
    _step(f"release {args.release} revision {revision.revision}: {revision.status.value}")
    print(f"\nNext: kubectl -n {args.namespace} get deployments")
    print("Then: kubectl apply -f examples/modelservice-cpu.yaml")
    return 0


def run_uninstall(args: argparse.Namespace) -> int:
    client = _client(args)

    async def uninstall() -> None:
        _step(f"uninstalling release {args.release} from namespace {args.namespace}")
        await client.uninstall_release(args.release, namespace=args.namespace, wait=False)

    try:
        asyncio.run(uninstall())
    except Exception as e:
        print(f"zeroserve: uninstall failed: {e}", file=sys.stderr)
        return 1
    _step("done; the ModelService CRD stays (Helm never deletes CRDs), so ModelServices are kept")
    return 0
