"""GRU step benchmarks (GPU only): forward + backward of one layer step, "cell" variant.

At batch 32/128/512 × hidden 100/256/512 (GPU_GRU_SIZES below; input size = hidden, as in the
shared-embedding mode), one group per size with three members, timed in the same run:
  - reference: the plain-torch path (input projection, then ops.gru.gru_step_reference;
    what GRULayer does on the torch backend) — the group's baseline;
  - grucell:   torch.nn.GRUCell with the same weights (cuDNN/ATen fused cell) — a baseline too;
  - fused:     ops.gru.gru_step_fused(backend="triton", precision="ieee"): one forward launch,
    two backward launches (exact fp32, the same precision as the two baselines).
A fourth member, fused-tf32 (precision="tf32"), runs when FASTGRU4REC_GRU_BENCH_TF32=1.
Every member computes the gradients of x, h and all four parameters (torch.autograd.grad) and is
timed with a device synchronisation inside the clock. Without CUDA every benchmark skips.
"""
from __future__ import annotations

import os

import pytest
import torch

from fastgru4rec.ops.gru import gru_step_fused, gru_step_reference

GPU_GRU_SIZES = [(b, H) for b in (32, 128, 512) for H in (100, 256, 512)]
IMPLS = ["reference", "grucell", "fused"]
if os.environ.get("FASTGRU4REC_GRU_BENCH_TF32", "") not in ("", "0"):
    IMPLS.append("fused-tf32")


def _step_fn(impl: str, b: int, H: int, device):
    g = torch.Generator(device="cpu").manual_seed(b * 1000 + H)
    cell = torch.nn.GRUCell(H, H)
    with torch.no_grad():
        for p in cell.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * H ** -0.5)
    cell = cell.to(device)
    x = torch.randn(b, H, generator=g).to(device).requires_grad_(True)
    h = torch.randn(b, H, generator=g).to(device).requires_grad_(True)
    dout = torch.randn(b, H, generator=g).to(device)
    params = [cell.weight_ih, cell.bias_ih, cell.weight_hh, cell.bias_hh]
    leaves = [x, h] + params

    if impl == "grucell":
        fwd = lambda: cell(x, h)
    elif impl == "reference":
        fwd = lambda: gru_step_reference(torch.nn.functional.linear(x, cell.weight_ih, cell.bias_ih),
                                         h, cell.weight_hh, cell.bias_hh, "cell")
    else:
        prec = "tf32" if impl == "fused-tf32" else "ieee"
        fwd = lambda: gru_step_fused(x, h, cell.weight_ih, cell.bias_ih, cell.weight_hh,
                                     cell.bias_hh, "cell", backend="triton", precision=prec)

    def step():
        out = fwd()
        grads = torch.autograd.grad(out, leaves, dout)
        torch.cuda.synchronize()
        return grads

    return step


@pytest.mark.gpu
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("b,H", GPU_GRU_SIZES, ids=[f"b{b}-h{H}" for b, H in GPU_GRU_SIZES])
def test_gru_step_fwd_bwd_gpu(benchmark, cuda, b, H, impl):
    benchmark.group = f"gpu-gru-step-fwd-bwd-b{b}-h{H}"
    if impl in ("reference", "grucell"):
        benchmark.extra_info["baseline"] = impl
    benchmark.extra_info.update(impl=impl, batch=b, hidden=H, variant="cell")
    step = _step_fn(impl, b, H, cuda)
    for _ in range(3):          # compile the Triton kernels and warm the allocator first
        step()
    benchmark(step)
