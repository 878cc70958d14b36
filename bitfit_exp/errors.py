"""The one exception type the CLI turns into a one-line `error: ...` message instead of a traceback."""


class UserError(Exception):
    """Bad input or environment the user can fix; the message says how."""
