"""Write the generated dashboard into the chart: python -m zeroserve.monitoring [PATH]."""

from __future__ import annotations

import sys
from pathlib import Path

from zeroserve.monitoring.dashboard import render

CHART = Path(__file__).resolve().parents[2] / "charts" / "zeroserve"
CHART_DASHBOARD = CHART / "dashboards" / "zeroserve.json"


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else CHART_DASHBOARD
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render())
    print(path)


if __name__ == "__main__":
    main()
