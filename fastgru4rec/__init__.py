"""fastgru4rec: GRU4Rec (Hidasi et al. 2016/2018), faithful to the papers and fast.

Public names are imported lazily so that ``import fastgru4rec`` (and the CLI's start-up)
does not pay for torch until a model is needed.
"""
import importlib

__version__ = "0.1.0"

_PUBLIC = {
    "SessionData": "data",
    "read_events": "data",
    "read_sessions": "data",
    "GRU4RecConfig": "config",
    "GRU4Rec": "estimator",
    "GRU4RecModel": "nn",
}


def __getattr__(name):
    if name in _PUBLIC:
        return getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    raise AttributeError(f"module 'fastgru4rec' has no attribute {name!r}")


def __dir__():
    # the lazily imported names too, so that tab completion shows them
    return sorted(set(globals()) | set(_PUBLIC))


__all__ = list(_PUBLIC)
