"""The set of tables `bitfit-tables` writes, built from collect's rows: which tables the records allow, and per table
its cells (long format), its laid-out frame (the Markdown/LaTeX strings) and its notes. `bitfit-tables` writes them;
`bitfit-report` shows the very same ones on its page.

    df, warnings = collect("~/bitfit-runs")
    for t in build_tables(df, "all"):
        print(t.name, len(t.frame), len(t.cells))

>>> table_names(["1", "3"])
['table1', 'table3']
"""

from dataclasses import dataclass

import pandas as pd

from bitfit_exp.model.peft_methods import PEFT_TYPES
from bitfit_exp.results.reference import load_reference, load_token_reference
from bitfit_exp.results.selection import (
    GLUE_TASKS,
    TABLES,
    Selection,
    TableDef,
    found_rows,
    ours_selection,
    peft_selection,
    select_best_lr,
    table_selection,
    with_other_protocols,
)
from bitfit_exp.results.tables import (
    PEFT_TITLE,
    build_table,
    build_token_table,
    compare,
    peft_notes,
    table_notes,
    token_cells,
    token_notes,
)

CHOICES = ["1", "2", "3", "pos", "ours", "peft", "all"]


@dataclass(frozen=True)
class BuiltTable:
    """One table: its file name (table3, pos, ours), definition, cells (compare's long format, the CSV), frame
    (build_table's strings, the Markdown), notes and the selection behind it."""
    name: str
    table: TableDef
    cells: pd.DataFrame
    frame: pd.DataFrame
    notes: list[str]
    selection: Selection


def table_names(choices) -> list[str]:
    """File names of explicit --table choices ("3" -> "table3")."""
    return [c if c in ("ours", "pos", "peft") else f"table{c}" for c in choices]


def glue_rows(df: pd.DataFrame) -> pd.DataFrame:
    """GLUE and one's own sentence(-pair) tasks; QA and tagging have tables and figures of their own."""
    return df[df["task"].isin(GLUE_TASKS) | ((df["kind"] == "sequence") & ~df["task"].isin(TABLES["pos"].tasks))]


def epoch_text(epoch: str | None) -> str:
    return f"the {epoch} epoch" if epoch else "each record's selected epoch"


def build_tables(df: pd.DataFrame, which: str = "all", expected_seeds: int = 5,
                 epoch: str | None = None) -> list[BuiltTable]:
    """The tables of `which` (CHOICES; "all": each paper table with records, pos where POS records exist, and
    ours) from collect's rows `df` (at `epoch`, which the notes name)."""
    glue = glue_rows(df)
    best, reference = select_best_lr(glue), load_reference()
    found = set(found_rows(best))
    if which == "all":
        names = [n for n, t in TABLES.items() if n != "pos" and set(t.rows) & found]
        names += ["pos"] if df["task"].isin(TABLES["pos"].tasks).any() else []
        names += [] if glue.empty else ["ours"]
        names += ["peft"] if glue["method"].isin(PEFT_TYPES).any() else []
    else:
        names = table_names([which])
    out = []
    for name in names:
        if name == "pos":
            t = TABLES[name]
            selection = with_other_protocols(df, t)
            cells = token_cells(selection.best, selection.rows, load_token_reference())
            frame = build_token_table(cells, expected_seeds)
            notes = token_notes(cells, selection, epoch_text(epoch), t)
        else:
            if name == "ours":
                t, selection = TableDef("Our runs, GLUE dev", None, []), ours_selection(best)
            elif name == "peft":
                t, selection = TableDef(PEFT_TITLE, None, []), peft_selection(best)
            else:
                t = TABLES[name]
                selection = table_selection(df, t)
            cells = compare(selection.best, selection.rows, reference, t.paper)
            frame = build_table(selection.best, selection.rows, reference, t.paper, expected_seeds)
            notes = table_notes(cells, selection, epoch_text(epoch), t) + (peft_notes(cells) if name == "peft" else [])
        out.append(BuiltTable(name, t, cells, frame, notes, selection))
    return out
