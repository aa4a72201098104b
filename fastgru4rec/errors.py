"""Exceptions of fastgru4rec. Both are ValueErrors so callers can catch one type; the CLI
prints their one-line message and exits non-zero without a traceback."""


class DataError(ValueError):
    """Bad input data: a file, a column, a row, or arrays. The message names where."""


class ConfigError(ValueError):
    """A bad parameter: an unknown key, a wrong type, a value out of range."""
