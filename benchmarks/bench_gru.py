"""GRU step benchmarks (GPU only): forward + backward of one layer step, "cell" variant.

At batch 32/128/512 × hidden 100/256/512 (GPU_GRU_SIZES below; input size = hidden, as in the
shared-embedding mode), one group per size with three members, timed in the same run:
  - reference: the plain-torch path (input projection, then ops.gru.gru_step_reference;
    what GRULayer does on the torch backend) — the group's baseline;
  - grucell:   torch.nn.GRUCell with the same weights (cuDNN/ATen fused cell) — a baseline too;
  - fused:     ops.gru.gru_step_fused(backend="triton", precision="ieee"): one forward launch,
    two backward launches (exact fp32, the same precision as the two baselines).
A fourth member, fused-tf32 (precision="tf32"), runs when FASTGRU4REC_GRU_BENCH_TF32=1.
Every member computes the gradients of x, h and all four parameters (torch.autograd.grad).

Two timings of each, since they answer different questions:
  - eager (groups gpu-gru-step-fwd-bwd-*): one step called from Python, a device
    synchronisation inside the clock: what a user calling the op in their own loop sees. At
    these sizes the device work is a few µs, so this measures host overhead (dispatch, autograd,
    launches); the first H200 run had all three members at 0.4-1.5 ms whatever the size.
  - graphed (groups gpu-gru-step-graphed20-*): GRAPH_STEPS steps captured in one CUDA graph
    (torch.cuda.graph, the engine's way of running a step), a round = one replay + a
    synchronisation, so a round's time is GRAPH_STEPS steps of device time plus one replay's
    launch: the kernels themselves. test_gru_step_graphed_claim_gpu times the three graphs
    again with CUDA events, interleaved, and checks the issue's claim (the fused step faster
    than both baselines) on them.
Without CUDA every benchmark skips.
"""
from __future__ import annotations

import os
import statistics

import pytest
import torch

from fastgru4rec.ops.gru import gru_step_fused, gru_step_reference

GPU_GRU_SIZES = [(b, H) for b in (32, 128, 512) for H in (100, 256, 512)]
IMPLS = ["reference", "grucell", "fused"]
GRAPH_STEPS = 20          # steps in one captured graph (one benchmark round)
if os.environ.get("FASTGRU4REC_GRU_BENCH_TF32", "") not in ("", "0"):
    IMPLS.append("fused-tf32")


def _step_fn(impl: str, b: int, H: int, device):
    """One forward + backward step of impl at (b, H) on fixed random inputs, not synchronised
    (the gradients of x, h and the four parameters)."""
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

    def step_async():
        return torch.autograd.grad(fwd(), leaves, dout)

    return step_async


def _synced(step_async):
    def step():
        grads = step_async()
        torch.cuda.synchronize()
        return grads
    return step


def _graph_of_steps(impl: str, b: int, H: int, device):
    """(a CUDA graph of GRAPH_STEPS forward + backward steps of ``impl`` on fixed inputs, what
    the graph reads and writes: keep it with the graph, the replays use its memory), after
    warm-up on a side stream as torch.cuda.graph requires (the Triton kernels compile there,
    outside the capture)."""
    step = _step_fn(impl, b, H, device)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = [step() for _ in range(GRAPH_STEPS)]
    graph.replay()
    torch.cuda.synchronize()
    return graph, (step, outs)


def _describe(benchmark, group: str, impl: str, b: int, H: int, **extra) -> None:
    """The benchmark's group, its baselines (the reference path and GRUCell) and extra_info."""
    benchmark.group = group
    if impl in ("reference", "grucell"):
        benchmark.extra_info["baseline"] = impl
    benchmark.extra_info.update(impl=impl, batch=b, hidden=H, variant="cell", **extra)


@pytest.mark.gpu
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("b,H", GPU_GRU_SIZES, ids=[f"b{b}-h{H}" for b, H in GPU_GRU_SIZES])
def test_gru_step_fwd_bwd_gpu(benchmark, cuda, b, H, impl):
    _describe(benchmark, f"gpu-gru-step-fwd-bwd-b{b}-h{H}", impl, b, H)
    step = _synced(_step_fn(impl, b, H, cuda))
    for _ in range(3):          # compile the Triton kernels and warm the allocator first
        step()
    benchmark(step)


@pytest.mark.gpu
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("b,H", GPU_GRU_SIZES, ids=[f"b{b}-h{H}" for b, H in GPU_GRU_SIZES])
def test_gru_step_graphed_gpu(benchmark, cuda, b, H, impl):
    """One round: one replay of GRAPH_STEPS captured steps, then a device synchronisation."""
    _describe(benchmark, f"gpu-gru-step-graphed{GRAPH_STEPS}-b{b}-h{H}", impl, b, H,
              steps_per_round=GRAPH_STEPS)
    graph, _keep = _graph_of_steps(impl, b, H, cuda)

    def replay():
        graph.replay()
        torch.cuda.synchronize()

    benchmark.pedantic(replay, rounds=50, iterations=1, warmup_rounds=3)


@pytest.mark.gpu
@pytest.mark.parametrize("b,H", GPU_GRU_SIZES, ids=[f"b{b}-h{H}" for b, H in GPU_GRU_SIZES])
def test_gru_step_graphed_claim_gpu(cuda, claim, b, H):
    """The issue's claim on device time: the fused step (fp32) faster than the reference path
    and than torch.nn.GRUCell at this size, each a graph of GRAPH_STEPS steps replayed 30 times,
    the three interleaved so that they see the same moments of the machine; medians."""
    captured = {impl: _graph_of_steps(impl, b, H, cuda) for impl in IMPLS if impl != "fused-tf32"}
    times = {impl: [] for impl in captured}
    for _ in range(30):
        for impl, (graph, _keep) in captured.items():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            times[impl].append(start.elapsed_time(end) * 1e3 / GRAPH_STEPS)   # µs a step
    us = {impl: statistics.median(t) for impl, t in times.items()}
    print(f"\ngraphed GRU step b{b} H{H} (device µs a step): " +
          ", ".join(f"{impl} {t:.1f}" for impl, t in us.items()) +
          f"; fused x{us['reference'] / us['fused']:.2f} vs reference, "
          f"x{us['grucell'] / us['fused']:.2f} vs GRUCell")
    for base in ("reference", "grucell"):
        claim(us["fused"] < us[base], f"b{b} H{H}: fused {us['fused']:.1f} µs a step is not "
                                      f"faster than {base} {us[base]:.1f} µs (graphed)")
