"""The screenshot of bitfit-report's first screen that the README shows (docs/report-screenshot.png): the example
runs dir of tests/test_report.py (synthetic records: Table 3's protocol for BERT-base Full-FT and BitFit on four
GLUE tasks x 4 lrs x 3 seeds, a MiniLM run of one's own, MiniLM data-size runs, a corrupt record), its report, and
headless chromium (tests/test_report_browser.py's) at 1400x900.

    python scripts/report_screenshot.py                       # -> docs/report-screenshot.png
    python scripts/report_screenshot.py --out /tmp/shot.png --keep /tmp/example-report
"""

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(REPO / "docs" / "report-screenshot.png"))
    p.add_argument("--keep", default=None, help="write the runs dir and the page here (default: a temporary folder)")
    args = p.parse_args()
    from test_report import write_example_runs
    from test_report_browser import browser_missing, open_browser

    from bitfit_exp.commands.report import main as report_main

    if why := browser_missing():
        sys.exit(f"error: {why}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep or tmp)
        write_example_runs(root / "bitfit-runs")
        if report_main([str(root / "bitfit-runs"), "--out", str(root / "page")]) != 0:
            sys.exit("error: bitfit-report failed")
        driver = open_browser(1400, 900)
        try:
            driver.get((root / "page" / "index.html").resolve().as_uri())
            driver.save_screenshot(args.out)
        finally:
            driver.quit()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
