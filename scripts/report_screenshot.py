"""Screenshot of a study's HTML report as headless Chromium renders it (docs/report.png).

    .venv/bin/python scripts/report_screenshot.py --out runs/quality-shapes/search \
        --to docs/report.png

Rebuilds OUT/report.html first (``policysearch.reporting.report``), then photographs the top
``--height`` pixels of the page at 1280 pixels wide. Needs Debian's chromium package.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import policysearch as ps  # noqa: E402
from tests.browser import chromium_path, open_page  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="a search's output folder")
    parser.add_argument("--to", type=Path, default=ROOT / "docs" / "report.png")
    parser.add_argument("--height", type=int, default=1500)
    args = parser.parse_args()
    chromium = chromium_path()
    if chromium is None:
        print("Chromium is not installed (apt-get install -y chromium)", file=sys.stderr)
        return 2
    report = ps.report(args.out)
    with open_page(report, executable=chromium, width=1280, height=args.height) as (page, log):
        page.screenshot(path=str(args.to), full_page=False)
    outside = [u for u in log.requests if not u.startswith(("data:", "file:"))]
    print(f"wrote {args.to} from {report} (requests outside the file: {len(outside)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
