"""Which implementation an op runs: one rule for every op.

backend "torch" is the plain-torch reference, "triton" the fused kernels in kernels/, and
"auto" picks triton for CUDA tensors (when triton is installed) and torch otherwise. Setting
the environment variable FASTGRU4REC_BACKEND=torch makes every op's "auto" choose the reference
(an escape hatch for a GPU stack the kernels have not been checked on; it covers the kernels,
the training step and the row optimizer; the C++ batcher and sampler have their own switch,
FASTGRU4REC_NO_NATIVE).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
from types import ModuleType

import torch

BACKENDS = ("auto", "torch", "triton")
ENV_BACKEND = "FASTGRU4REC_BACKEND"


# Looked up once, at import (find_spec does not import triton): torch.compile traces
# resolve_backend, and Dynamo (torch 2.11) refuses to trace importlib.util.find_spec itself,
# which graph-broke every compiled call of an op; a module-level bool traces as a constant.
_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def triton_available() -> bool:
    return _TRITON_INSTALLED


def reference_forced() -> bool:
    """FASTGRU4REC_BACKEND=torch is set: every "auto" picks the plain-torch reference (the
    CPU fast paths too: the training step's explicit backward, the C++ row update)."""
    return os.environ.get(ENV_BACKEND, "").lower() == "torch"


def resolve_backend(backend: str, like: torch.Tensor, op: str = "op") -> str:
    """"torch" or "triton" for an op whose main input is ``like``."""
    if backend not in BACKENDS:
        raise ValueError(f"{op} backend {backend!r} is unknown (choose from {', '.join(BACKENDS)})")
    if backend == "auto":
        if reference_forced():
            return "torch"
        return "triton" if like.is_cuda and triton_available() else "torch"
    if backend == "triton" and not triton_available():
        raise ValueError(f"{op} backend 'triton' is not available (triton is not installed)")
    return backend


def load_contracts() -> ModuleType:
    """kernels/contracts.py: the launch functions' argument checks, which the plain-torch
    references apply too (same arguments accepted and refused by both backends). Plain torch:
    importing it never imports triton."""
    return load_kernels("contracts")


def load_kernels(name: str) -> ModuleType:
    """A launch module of kernels/, imported on first use (importing an op never imports
    triton). Installed wheel: fastgru4rec.kernels.<name>; source checkout: kernels.<name>."""
    try:
        return importlib.import_module(f"fastgru4rec.kernels.{name}")
    except ModuleNotFoundError as e:
        # only a missing fastgru4rec.kernels (a source checkout on sys.path) falls back; an
        # import failing inside the module (a broken triton) is that failure, not this one
        if e.name not in ("fastgru4rec.kernels", f"fastgru4rec.kernels.{name}"):
            raise
        return importlib.import_module(f"kernels.{name}")
