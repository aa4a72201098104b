"""Exceptions of fastgru4rec. Both are ValueErrors so callers can catch one type; the CLI
prints their one-line message and exits non-zero without a traceback."""


class DataError(ValueError):
    """Bad input data: a file, a column, a row, or arrays. The message names where."""


class ConfigError(ValueError):
    """A bad parameter: an unknown key, a wrong type, a value out of range."""


def one_line(e: BaseException, limit: int = 0) -> str:
    """An exception's message on one line (runs of whitespace, newlines included, become one
    space: torch's and pyarrow's messages span lines); cut to ``limit`` characters with "..."
    when limit > 0."""
    text = " ".join(str(e).split())
    return text[:limit - 3] + "..." if 0 < limit < len(text) else text
