"""Host time of one eager forward + backward of the fused GRU step, its kernels stubbed.

At the sizes GRU4Rec trains (batch 32-512, hidden 100-512) a step's device work is
microseconds, so an eager call from Python costs what the host does around the launches:
argument checks, allocations, autograd and dispatch. This script replaces the GRU kernels
with no-ops (no GPU needed: Triton's interpreter mode lets the launch functions take CPU
tensors) and times, in the same run,

  - eager:     ops.gru.gru_step_fused as an eager call runs it (a torch.autograd.Function);
  - custom-op: the same step through the torch.library custom op (what torch.compile traces);
  - grucell:   torch.nn.GRUCell forward + backward with real CPU arithmetic (a yardstick
               only: its time includes the arithmetic);

each followed by torch.autograd.grad of x, h and the four parameters, medians of --repeats runs
of --calls calls (µs a call). The first H200 run (2026-11-29) had the eager fused step at
1.1-1.5 ms against GRUCell's 0.4-0.9 ms, all host time; this measures the part that is ours.

    python benchmarks/host_overhead.py [--batch 32] [--hidden 100] [--calls 2000]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class _NoLaunch:
    """kernel[grid](...) that does nothing (the outputs stay as allocated)."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=100)
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    os.environ["TRITON_INTERPRET"] = "1"          # before the kernels are imported
    try:
        import fastgru4rec  # noqa: F401  (installed, or on PYTHONPATH)
    except ImportError:
        sys.path.insert(0, str(ROOT))             # the source checkout this script is in
    import torch

    import fastgru4rec.ops.gru as G
    from fastgru4rec.ops.backend import load_kernels

    torch.set_num_threads(1)
    kernels, launch = load_kernels("gru_step"), load_kernels("launch")
    launch.poison = False                         # as on a GPU outside the tests
    for name in dir(kernels):
        if name.startswith("_gru") and name.endswith("_kernel"):
            setattr(kernels, name, _NoLaunch())
    b, H = args.batch, args.hidden
    cell = torch.nn.GRUCell(H, H)
    x = torch.randn(b, H, requires_grad=True)
    h = torch.randn(b, H, requires_grad=True)
    dout = torch.randn(b, H)
    leaves = [x, h, cell.weight_ih, cell.bias_ih, cell.weight_hh, cell.bias_hh]
    seed = torch.zeros(1, dtype=torch.int64)

    def eager():
        out = G.gru_step_fused(x, h, cell.weight_ih, cell.bias_ih, cell.weight_hh, cell.bias_hh,
                               "cell", backend="triton")
        return torch.autograd.grad(out, leaves, dout)

    def custom_op():
        out, _ = torch.ops.fastgru4rec.gru_step_fwd(x, h, cell.weight_ih, cell.bias_ih,
                                                    cell.weight_hh, cell.bias_hh, None, None,
                                                    seed, "cell", 0.0, 0.0, 0, "ieee")
        return torch.autograd.grad(out, leaves, dout)

    def grucell():
        return torch.autograd.grad(cell(x, h), leaves, dout)

    impls = {"eager": eager, "custom-op": custom_op, "grucell": grucell}
    times = {name: [] for name in impls}
    for fn in impls.values():
        for _ in range(200):
            fn()
    for _ in range(args.repeats):           # interleaved: each sees the same moments
        for name, fn in impls.items():
            t = time.perf_counter()
            for _ in range(args.calls):
                fn()
            times[name].append(1e6 * (time.perf_counter() - t) / args.calls)
    print(f"host time of one forward + backward, b {b} H {H}, GRU kernels stubbed "
          f"(µs a call, median of {args.repeats})")
    us = {name: statistics.median(t) for name, t in times.items()}
    for name, t in us.items():
        print(f"  {name:<10} {t:8.1f}")
    print(f"  custom-op / eager: x{us['custom-op'] / us['eager']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
