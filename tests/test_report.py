"""bitfit-report on synthetic run records (tests/test_tables.py's): one self-contained page whose tables are
bitfit-tables' own cells, per-setting plots, the paper's figures, what was left out, provenance; record strings
escaped; bad input refused in one line before anything is written."""

import contextlib
import csv
import io
import re

import pytest
from test_tables import make_record, run_config, write

from bitfit_exp.commands.report import main
from bitfit_exp.commands.tables import main as tables_main

INJECT = "<script>alert(1)<"  # no "/": it is also a folder name


def _scores(base: float, lr_index: int, n_seeds: int) -> list[float]:
    return [base + 1.5 * lr_index - abs(lr_index - 2) * 2.0 + (seed - 1) * 0.8 for seed in range(n_seeds)]


def write_example_runs(root, n_seeds: int = 5) -> None:
    """A small, realistic runs dir: Table 3's protocol for BERT-base Full-FT and BitFit on four tasks over the
    sweep's 4 lrs and `n_seeds` seeds (BitFit QNLI: 3 seeds; one diverged seed; MRPC's best epoch is the last), a
    MiniLM CPU run of one's own protocol, MiniLM data-size runs (seeded subsets of 100, 300, 1000 examples), a
    hand-edited (corrupt) record, and strings with HTML in a task name and in a record's environment."""
    # the best lr's mean lands near the paper's Table 3 (within noise in most cells, CoLA Full-FT outside)
    base = {"bitfit": {"qnli": 87.6, "sst2": 88.0, "cola": 55.9, "mrpc": 85.9, "rte": 69.6},
            "full": {"sst2": 88.4, "cola": 55.1, "mrpc": 85.8, "rte": 65.8}}
    for method, scores in base.items():
        for task, score in scores.items():
            for i in range(4):
                config = run_config("bert_base", task, method, None, "+experiment=table3", f"lr_index={i}")
                seeds = 3 if task == "qnli" else n_seeds
                for seed, value in enumerate(_scores(score, i, seeds)):
                    diverged = method == "full" and task == "cola" and i == 3 and seed == 0
                    record = make_record("bert_base", task, method, None, seed, value, config=config,
                                         status="diverged" if diverged else "finished",
                                         best_at_last=task == "mrpc", finished_at=f"2025-03-0{1 + i}T12:00:00+00:00")
                    record["env"] = {"device": "cuda:0", "device_name": "NVIDIA A100-SXM4-80GB", "torch": "2.7.1",
                                     "transformers": "5.0.0", "bitfit_exp": "0.1.0", "python": "3.11.9",
                                     "git_sha": "0123abcd" * 5, "git_dirty": False, "hostname": "node17"}
                    record["timings"]["total_s"] = 600.0
                    write(root, record)
    for seed, value in enumerate([61.0, 63.5, 62.0]):
        write(root, make_record("minilm", "rte", "bitfit", 1e-3, seed, value, changes={"train.batch_size": 16}))
    for method, lr in (("bitfit", 1e-3), ("full", 5e-5)):
        for n, score in ((100, 55.0), (300, 58.0), (1000, 62.0)):
            for seed in range(2):
                record = make_record("minilm", "sst2", method, lr, seed, score + seed + (method == "full"),
                                     changes={"data.max_train_samples": n, "data.train_subset_seed": 0})
                record["sizes"].update(train=n, train_examples=n)
                write(root, record)
    config = run_config("minilm", "sst2", "bitfit", 1e-3)
    config["task"]["name"] = INJECT
    odd = make_record("minilm", INJECT, "bitfit", 1e-3, 0, 50.0, config=config)
    odd["env"] = {"device": "cpu", "device_name": f"{INJECT}/script>", "hostname": "<img src=x onerror=alert(2)>"}
    write(root, odd)
    corrupt = write(root, make_record("minilm", "mrpc", "bitfit", 1e-3, 0, 70.0))
    corrupt.write_text(corrupt.read_text().replace('"pct_encoder": 0.0872', '"pct_encoder": 0.5'))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """(runs dir, report folder, bitfit-tables folder, page text, stderr) of the example runs."""
    root = tmp_path_factory.mktemp("report")
    runs, out, tables = root / "runs", root / "page", root / "tables"
    write_example_runs(runs)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        assert main([str(runs), "--out", str(out)]) == 0
        assert tables_main(["--runs-dir", str(runs), "--table", "all", "--out", str(tables)]) == 0
    return runs, out, tables, (out / "index.html").read_text(encoding="utf-8"), err.getvalue()


def test_the_page_is_self_contained(report):
    _, out, _, html, _ = report
    assert sorted(p.name for p in out.iterdir()) == ["index.html"]
    assert not re.search(r"https?://", html)  # no resource from anywhere: it opens from disk, offline
    assert "<script" not in html and "<link" not in html and "@import" not in html
    assert html.count("data:image/png;base64,") >= 2  # the gap and data-size figures, inlined
    assert html.count("<svg") == 2 * 17  # two plots per setting card: 9 paper-table cells, 8 more rows of ours


def test_record_strings_are_escaped(report):
    _, _, _, html, _ = report
    assert INJECT not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;" in html  # shown, as text (the ours table's column and its card)
    assert f"{'&lt;script&gt;alert(1)&lt;'}/script&gt; (cpu)" in html  # the device of that record, escaped


def test_tables_hold_bitfit_tables_cells(report):
    _, _, tables, html, _ = report
    for name in ("table2", "table3", "ours"):
        markdown = (tables / f"{name}.md").read_text(encoding="utf-8")
        rows = [line for line in markdown.splitlines() if line.startswith("| ") and "---" not in line][1:]
        for line in rows:  # every cell string of the Markdown table is a cell of the page
            for text in (c.strip().replace(r"\|", "|") for c in line.strip("|").split(" | ")):
                if text and text not in ("ours", "paper", "Δ"):
                    assert f">{text}<" in html.replace("&lt;", "<").replace("&gt;", ">").replace("&#x27;", "'"), \
                        (name, text)
    assert 'class="ok"' in html and 'class="bad"' in html
    # BitFit QNLI stands on 3 of 5 seeds: marked as in the Markdown, and coloured so
    assert re.search(r'<td class="marked" data-column="qnli"><a href="#s-[0-9a-f]{8}">[0-9.]+±[0-9.]+ \(3/5 seeds\)</a>',
                     html)
    # MRPC's best epoch is the last one for every seed: marked (by CSS, the text stays the Markdown's), and said
    assert len(re.findall(r'<td class="at-last" data-column="mrpc" title="best epoch = last epoch for 5/5 seeds: ',
                          html)) == 3 * 2  # Tables 2, 3 and ours, Full-FT and BitFit
    assert html.count('<td class="at-last"') == 6
    assert "<p>Best epoch = last epoch for most seeds of: BERT-base Full-FT MRPC (5/5 seeds)" in html
    # the summary above each table counts its CSV's cells (Avg aside)
    for name, title in (("table3", "Table 3: BERT-base, subsets of parameters, GLUE dev"),
                        ("table2", "Table 2: BERT-base, BERT-large, RoBERTa-base, GLUE dev")):
        rows = [r for r in csv.DictReader(open(tables / f"{name}.csv", encoding="utf-8")) if r["column"] != "avg"]
        ours = sum(r["n_seeds"] != "" for r in rows)
        ok, bad = sum(r["within"] == "True" for r in rows), sum(r["within"] == "False" for r in rows)
        assert ours == 9 and ok + bad == 9 and ok and bad  # every cell with records has a paper cell to compare
        assert (f'{title}</h3><p class="summary">{ours} cells with records; {ok} within noise of the paper (✓), '
                f'{bad} outside (✗); {len(rows) - ours} without records.') in html


def test_what_was_left_out_and_provenance(report):
    _, _, _, html, err = report
    assert "content does not match its digest" in html and "content does not match its digest" in err
    # 2 methods x 4 tasks x 4 lrs x 5 seeds, and BitFit QNLI's 4 lrs x 3 seeds
    assert "NVIDIA A100-SXM4-80GB (cuda:0)" in html and "172 records" in html
    assert "GPU 28.67 h" in html  # 172 records x 600 s
    assert "0123abcd" * 5 in html
    assert "bitfit-run +experiment=table3 --multirun" in html
    # BERT-base's cells are Table 2's and Table 3's (the same protocol): the card names the first table's sweep
    assert "bitfit-run +experiment=table2 model=bert_base task=rte method=bitfit --multirun" in html
    assert "bitfit-run model=minilm task=rte method=bitfit optim.lr=0.001 &#x27;seeds=[0,1,2]&#x27; " \
           "train.batch_size=16" in html
    assert "bitfit-run +experiment=table2_roberta" not in html  # no records of that sweep: not a command to rerun


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "page"
    assert main([str(tmp_path / "missing"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "no such folder" in err
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty"), "--out", str(out)]) == 2
    assert "no done run records" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main([str(tmp_path / "empty"), "--out", str(tmp_path / "file")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert main([str(tmp_path / "empty"), "--out", str(out), "--max-settings", "-1"]) == 2
    assert "--max-settings" in capsys.readouterr().err
    assert not out.exists()


def test_bias_change_figure_of_a_setting_with_patches(tmp_path, capsys):
    from test_plots import bitfit_seeds  # records naming patches whose biases moved by known amounts

    bitfit_seeds(tmp_path / "runs", [1.0, 2.0])
    assert main([str(tmp_path / "runs"), "--out", str(tmp_path / "page")]) == 0
    html = (tmp_path / "page" / "index.html").read_text(encoding="utf-8")
    assert html.count('<img alt="bias change rte" src="data:image/png;base64,') == 1
    assert "Figure 1 of the paper for MiniLM-L6 BitFit" in html and "(2 seeds;" in html
    assert "warning" not in capsys.readouterr().err
