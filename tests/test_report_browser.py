"""The report page in a real headless browser (Debian's chromium through selenium and chromedriver), opened from
disk: no console error, every image loads, every table cell holds what `bitfit-tables` wrote for it in its CSV
(<table>.csv: bitfit-tables has no --format option, it always writes .md, .tex and .csv), and a screenshot of the
first screen. Skipped (with the reason) only where chromium is absent outside CI; in CI
(`CI` set) a missing browser fails."""

import csv
import math
import os
import shutil
from pathlib import Path

import pytest
from test_report import write_example_runs

from bitfit_exp.commands.report import main as report_main
from bitfit_exp.commands.tables import main as tables_main
from bitfit_exp.results.tables import fmt_param

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def browser_missing() -> str | None:
    """Why the browser cannot run here, or None."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (shutil.which(path) or os.access(path, os.X_OK)):
            return f"{path} not found (apt-get install chromium chromium-driver; .ci/run does)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium not installed (pip install -e '.[dev]')"
    return None


def open_browser(width: int = 1400, height: int = 900):
    """Headless chromium driven by chromedriver, its console kept for get_log("browser")."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


@pytest.fixture(scope="module")
def browser():
    why = browser_missing()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set and the browser test cannot run: {why}")
        pytest.skip(why)
    driver = open_browser()
    yield driver
    driver.quit()


def _fmt(value: str, spec: str) -> str:
    return format(float(value), spec)


def expected_texts(row: dict, source: str) -> tuple[str, ...]:
    """What a cell of `source` (ours, paper, Δ) begins with, from its CSV row ("" where the cell is empty)."""
    if source == "ours":
        mean, n = row["mean"], int(row["n_seeds"] or 0)
        if mean == "" or math.isnan(float(mean)):
            if n and int(row["n_diverged"] or 0) == n:
                return (f"diverged ({n}/{n})",)
            return ("no score", "—") if n else ("—",)
        std = "" if row["std"] in ("", "nan") or row["column"] == "avg" else f"±{_fmt(row['std'], '.1f')}"
        return (f"{_fmt(mean, '.1f')}{std}",)
    if source == "paper":
        if row["paper_mean"] == "":
            return ("—",)
        std = "" if row["paper_std"] == "" else f"±{_fmt(row['paper_std'], '.1f')}"
        return (f"{_fmt(row['paper_mean'], '.1f')}{std}",)
    if row["delta"] == "":
        return ("—",)
    mark = {"True": " ✓", "False": " ✗"}.get(row["within"], "")
    return (f"{_fmt(row['delta'], '+.1f')}{mark}",)


def page_cells(driver) -> dict:
    """(table, model, method, variant, source, column) -> text of every data cell of the page's tables."""
    rows = driver.execute_script("""
        return [...document.querySelectorAll('[data-table] table tbody tr')].map(tr => [
          tr.closest('[data-table]').dataset.table, tr.dataset.model, tr.dataset.method,
          tr.dataset.variant, tr.dataset.source,
          [...tr.querySelectorAll('td')].map(td => [td.dataset.column, td.textContent])]);""")
    return {(t, m, f, v, s, column): text for t, m, f, v, s, cells in rows for column, text in cells}


def test_the_page_in_a_real_browser(browser, tmp_path):
    runs, out, tables = tmp_path / "runs", tmp_path / "page", tmp_path / "tables"
    write_example_runs(runs)
    assert report_main([str(runs), "--out", str(out)]) == 0
    assert tables_main(["--runs-dir", str(runs), "--table", "all", "--out", str(tables)]) == 0
    browser.get((out / "index.html").resolve().as_uri())
    assert browser.title == "BitFit reproduction report"
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert errors == []
    images = browser.execute_script("return [...document.images].map(i => [i.alt, i.complete, i.naturalWidth])")
    assert len(images) >= 2 and all(done and width > 0 for _, done, width in images), images
    svgs = browser.execute_script("return [...document.querySelectorAll('svg')].map(s => s.getBBox().width)")
    assert len(svgs) == 2 * 17 and all(w > 0 for w in svgs)
    assert browser.execute_script("return document.querySelectorAll('script').length") == 0

    cells = page_cells(browser)
    assert {key[0] for key in cells} == {"table2", "table3", "ours"}
    checked = 0
    for path in sorted(tables.glob("*.csv")):
        for row in csv.DictReader(open(path, encoding="utf-8")):
            key = (path.stem, row["model"], row["method"], row["variant"])
            for source in ("ours", "paper", "Δ") if path.stem != "pos" else ("ours",):
                text = cells.get((*key, source, row["column"]))
                if source != "ours" and text is None:  # the paper has no such row: bitfit-tables shows none
                    assert row["paper_mean"] == "", (key, row["column"])
                    continue
                assert text is not None, (key, source, row["column"])
                assert text.startswith(expected_texts(row, source)), (key, source, row["column"], text)
                n_diverged = int(row["n_diverged"] or 0)
                if source == "ours" and n_diverged and row["column"] != "avg" and row["mean"] != "":
                    assert f"{n_diverged}/{row['n_seeds']} diverged" in text
                checked += 1
                if row["column"] == "avg":  # the row's %Param: the mean share of its cells, or the paper's
                    pct = {"ours": row["pct_encoder"], "paper": row["paper_pct"]}.get(source)
                    expected = "" if pct is None else fmt_param(float(pct) if pct else math.nan)
                    assert cells[(*key, source, "%Param")] == expected, (key, source)
                    checked += 1
    # every data cell of the page was matched with its CSV row (the labels Model, Method, Source aside)
    assert checked == sum(key[-1] not in ("Model", "Method", "Source") for key in cells) > 400

    shot = tmp_path / "first-screen.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000


def test_escaped_html_does_not_run(browser, tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "page"
    write_example_runs(runs)
    assert report_main([str(runs), "--out", str(out)]) == 0
    browser.get(Path(out / "index.html").resolve().as_uri())
    assert browser.execute_script("return document.querySelectorAll('script, img[src=x]').length") == 0
    assert "<script>alert(1)<" in browser.find_element("tag name", "body").text
