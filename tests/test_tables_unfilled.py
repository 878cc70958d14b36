"""`bitfit-tables --table all` (`make tables`) names each paper table it could not fill, why, and the sweep that fills
it; tables it wrote are not named."""

from test_tables import write_full_row, write_seeds

from bitfit_exp.commands.tables import main


def test_tables_without_records_are_named_with_their_sweep(tmp_path, capsys):
    runs, out = tmp_path / "runs", tmp_path / "tables"
    write_full_row(runs)  # BERT-base BitFit: rows of table2 and table3
    write_seeds(runs, "minilm", "rte", "bitfit", 1e-3, [60.0, 62.0])
    assert main(["--runs-dir", str(runs), "--table", "all", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    unfilled = [line for line in lines if " not written: " in line]
    assert unfilled == [
        f"table1 not written: no GLUE records of BERT-large with Full-FT/BitFit under {runs}; make them with "
        "bitfit-run +experiment=table1 --multirun",
        f"pos not written: no POS records of BERT-base/BERT-large/RoBERTa-base with Full-FT/BitFit under {runs}; "
        "make them with bitfit-run +experiment=pos --multirun"]
    assert not (out / "table1.md").exists() and (out / "table2.md").exists() and (out / "table3.md").exists()


def test_no_records_names_every_table(tmp_path, capsys):
    assert main(["--runs-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "tables")]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"no done run records under {tmp_path / 'empty'}"
    assert [line.split()[0] for line in err[1:]] == ["table1", "table2", "table3", "pos"]
    assert "bitfit-run +experiment=table2 --multirun and bitfit-run +experiment=table2_roberta --multirun" in err[2]


def test_an_explicit_table_is_written_without_the_list(tmp_path, capsys):
    runs = tmp_path / "runs"
    write_full_row(runs)
    assert main(["--runs-dir", str(runs), "--table", "3", "--out", str(tmp_path / "t")]) == 0
    assert " not written: " not in capsys.readouterr().out
