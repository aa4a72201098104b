"""Where the launch functions of kernels/ run: one answer for every kernel module.

- ``interpreting()``: Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1, read when
  a kernel is decorated, i.e. when a kernels/ module is imported).
- ``interpreter_blocks()``: launch functions pick large blocks (the interpreter pays per
  program, not per flop). True when interpreting, unless FASTGRU4REC_KERNEL_BLOCKS=gpu: then
  the interpreter runs the GPU's blocks, so the CPU tests cover the tile logic (block edges,
  K loops, catalog splits) a GPU runs (tests/test_gpu_blocks.py).
- ``interpreter_problem()``: None when the interpreter can run this package's kernels, else why
  not, in one line (Triton 3.6's interpreter fails under NumPy >= 2.4: a scalar argument
  passed on to a @jit helper that loops over it); the kernel tests skip with that reason.
- ``require_cuda(what, *tensors)``: a launch on CPU tensors outside the interpreter is an
  error, said in one line.
- ``sm_count(device)``: streaming multiprocessors, to size grids that fill the GPU.
- ``cdiv(a, b)`` / ``next_pow2(n)``: triton.cdiv / triton.next_power_of_2 in plain Python for
  the launch functions' grids and blocks: Triton's are constexpr functions, about 2 µs a call
  on the host, and an eager step makes a few dozen such calls.
- ``new_output(shape, dtype, device)`` / ``poisoned(t)``: the buffers launch functions hand to
  kernels, filled with NaN (integers: -2^30) first while ``poison`` is on, so an element a
  kernel forgets to write fails the tests' comparisons. On under the interpreter (CI) and with
  FASTGRU4REC_POISON=1 (the GPU check's device tests); tests may set ``launch.poison``.

benchmarks/compile_check.py compiles every kernel for a GPU on a machine without one: it
replaces these functions (module attributes, so the kernel modules must call them as
``launch.interpreting()`` etc., never import the names).
"""
from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

#: FASTGRU4REC_KERNEL_BLOCKS=gpu: the GPU's block sizes in the interpreter too
BLOCKS_ENV = "FASTGRU4REC_KERNEL_BLOCKS"
#: FASTGRU4REC_POISON=1: poison kernel outputs on a GPU too
POISON_ENV = "FASTGRU4REC_POISON"


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    try:
        return bool(triton.knobs.runtime.interpret)
    except AttributeError:   # older triton without knobs
        return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def interpreter_blocks() -> bool:
    """Size blocks for the interpreter rather than for a GPU (see the module docstring)."""
    if os.environ.get(BLOCKS_ENV, "").lower() == "gpu":
        return False
    return interpreting()


@triton.jit
def _interpreter_probe_loop(x_ptr, n, BLOCK: tl.constexpr):
    # a scalar argument passed on to a helper that loops over it: the kernels' K loops
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for k0 in range(0, n, BLOCK):
        o = k0 + tl.arange(0, BLOCK)
        acc += tl.load(x_ptr + o, mask=o < n, other=0.0)
    return acc


# Run only in the interpreter, never on a GPU: not named *_kernel, so compile_check (which
# compiles every *_kernel for sm_90) leaves it out.
@triton.jit
def _interpreter_probe(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    tl.store(out_ptr + tl.arange(0, BLOCK), _interpreter_probe_loop(x_ptr, n, BLOCK))


def interpreter_problem():
    """None if Triton's CPU interpreter runs a K loop like the kernels' (or nothing is being
    interpreted), else the reason in one line."""
    return _interpreter_probe_result() if interpreting() else None


@functools.lru_cache(maxsize=None)
def _interpreter_probe_result():
    """The probe, once per process."""
    x = torch.arange(10, dtype=torch.float32)
    out = torch.zeros(4)
    try:
        _interpreter_probe[(1,)](x, out, 10, BLOCK=4)
        problem = None if out.tolist() == [12.0, 15.0, 8.0, 10.0] else \
            f"the interpreter computed a wrong probe sum {out.tolist()}"
    except Exception as e:   # noqa: BLE001 - any failure means the kernels cannot run
        import numpy
        what = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:120]}"
        numpy_version = tuple(int(p) for p in numpy.__version__.split(".")[:2] if p.isdigit())
        if numpy_version >= (2, 4):   # the known case: Triton 3.6 under NumPy 2.4+
            problem = (f"Triton {triton.__version__}'s CPU interpreter fails with NumPy "
                       f"{numpy.__version__} ({what}); install numpy<2.4 or a newer Triton")
        else:
            problem = f"Triton {triton.__version__}'s CPU interpreter fails ({what})"
    return problem


def require_cuda(what: str, *tensors) -> None:
    for t in tensors:
        if t is not None and not t.is_cuda and not interpreting():
            raise ValueError(f"{what} needs CUDA tensors (or TRITON_INTERPRET=1 set before the "
                             "kernels are imported)")


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of ``device``; off a GPU (GPU blocks in the interpreter) those
    of the H100 / H200 this project is lent."""
    if device.type != "cuda":
        return 132
    idx = device.index if device.index is not None else torch.cuda.current_device()
    return torch.cuda.get_device_properties(idx).multi_processor_count


def cdiv(a: int, b: int) -> int:
    """⌈a / b⌉ (triton.cdiv) for non-negative a and positive b."""
    return -(-int(a) // int(b))


def next_pow2(n: int) -> int:
    """The smallest power of two >= n (triton.next_power_of_2; 0 gives 0, as Triton's)."""
    n = int(n)
    return n if n <= 1 else 1 << (n - 1).bit_length()


#: fill kernel outputs before each launch (see the module docstring); read at import
poison = interpreting() or os.environ.get(POISON_ENV, "0") == "1"


def poisoned(t: torch.Tensor) -> torch.Tensor:
    """``t`` (a buffer a kernel must overwrite), filled with NaN / -2^30 while poison is on."""
    if poison:
        t.fill_(float("nan") if t.dtype.is_floating_point else -(1 << 30))
    return t


def new_output(shape, dtype, device) -> torch.Tensor:
    """torch.empty for a kernel's output, poisoned while poison is on."""
    return poisoned(torch.empty(shape, dtype=dtype, device=device))
