"""The one exception type the CLI turns into a one-line `error: ...` message instead of a traceback, and how a
caught exception is shortened to fit in such a line."""


class UserError(Exception):
    """Bad input or environment the user can fix; the message says how."""


def first_line(e: Exception) -> str:
    """An exception as one short line for a UserError message: its type and the first line of its text.

    >>> first_line(OSError("Invalid: Parquet magic bytes not found\\nin footer"))
    'OSError: Invalid: Parquet magic bytes not found'
    """
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:160] if lines else ''}"
