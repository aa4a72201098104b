"""Functional ops: each has a plain-torch reference and (where one exists) a fast path behind
the same function, chosen with ``backend=``. Ops know nothing of modules or training."""

import importlib

_SUBMODULES = ("backend", "gru", "optim", "ranking", "scoring", "train_step")


def __getattr__(name):
    # ``import fastgru4rec.ops as ops; ops.gru`` works without importing each submodule first
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'fastgru4rec.ops' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_SUBMODULES))
