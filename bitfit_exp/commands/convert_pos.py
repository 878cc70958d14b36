"""Convert a one-token-per-line tagged text file (word<TAB>tag, CoNLL-X/CoNLL-U) to the Parquet layout a token
task reads (bitfit_exp.kinds.token.convert).

    python -m bitfit_exp.commands.convert_pos convert train.txt ~/pos-data/ptb/train.parquet --columns 2,5
"""

import argparse

from bitfit_exp.commands import fail
from bitfit_exp.core.errors import UserError
from bitfit_exp.kinds.token import convert


def main(argv: list[str] | None = None) -> None:
    """`python -m bitfit_exp.commands.convert_pos convert IN OUT [--columns WORD,TAG]`."""
    parser = argparse.ArgumentParser(prog="python -m bitfit_exp.commands.convert_pos",
                                     description="Convert a word<TAB>tag / CoNLL file to the task's Parquet layout.")
    commands = parser.add_subparsers(dest="command", required=True)
    convert_cmd = commands.add_parser("convert", help="one-token-per-line text file -> Parquet (tokens, xpos)")
    convert_cmd.add_argument("source", help="text file: word<TAB>tag lines, a blank line between sentences")
    convert_cmd.add_argument("target", help="Parquet file to write, e.g. <data.dir>/ptb/train.parquet")
    convert_cmd.add_argument("--columns", help="1-based word and tag columns, e.g. 2,5 (default: 1,2; 2,5 for "
                             "10-column CoNLL-X/CoNLL-U lines)")
    args = parser.parse_args(argv)
    try:
        columns = _parse_columns(args.columns)
        count = convert(args.source, args.target, columns)
    except UserError as e:
        fail(e)
    print(f"wrote {count} sentences to {args.target}")


def _parse_columns(text: str | None) -> tuple[int, int] | None:
    """--columns `2,5` as 0-based (word, tag) column indices; None keeps the default."""
    if text is None:
        return None
    try:
        word, tag = (int(x) - 1 for x in text.split(","))
    except ValueError:
        raise UserError(f"--columns={text!r}: give two 1-based column numbers, e.g. --columns 1,2") from None
    if min(word, tag) < 0:
        raise UserError(f"--columns={text!r}: column numbers start at 1")
    return word, tag


if __name__ == "__main__":
    main()
