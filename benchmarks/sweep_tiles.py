"""Time other tiles for the full-catalog cross-entropy kernels (kernels/scoring.py's
FULL_CE_TILES), so that a GPU run says which tiles the defaults should be.

The first H200 run (2026-11-29) had the fused full-catalog cross-entropy at N 1,000,000, b 512,
H 256 at 22.4 ms in tf32: 5·2·b·N·H = 1.3 TFLOP (the forward's score tiles, then dh and dW
each recomputing them before their product) at about 59 TFLOP/s, against the 402 TFLOP/s the
device's tf32 matmul reached, and slower than fp32 torch (21.2 ms). The tiles were chosen
without a GPU. This script times each kernel (forward, dh, dW) with each candidate of
CANDIDATES (the current default first), checks that every candidate computes what the default
does, and prints a table, fastest first per kernel; --json writes every row.

    python benchmarks/sweep_tiles.py [--precision tf32] [--n 1000000] [--json F]
    python benchmarks/sweep_tiles.py --device cpu     # each candidate once in Triton's
                                                      # interpreter at a small size (no timing)

Without CUDA (and without --device cpu) it says so and exits 0. benchmarks/compile_check.py
compiles every candidate for sm_90 (no GPU needed) and tests/test_scoring_kernel.py checks each
against float64 torch in the interpreter, so a GPU run spends no time on one that cannot run.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: per kernel, (BM rows, BN items, BK, num_warps): the GPU default at H 256 in tf32 first. Larger row
#: blocks read the item table fewer times (fwd, dh); larger item tiles in dW read h fewer times
#: (every dW program reads all b rows of h twice).
#: The second H200 run (2026-11-29, N 1M, b 512, H 256, tf32) made the fastest of these the
#: defaults: dh (32, 128, 32, 8) 7.99 ms against 10.47 for (32, 64, 32, 8); dW (64, 32, 32, 8)
#: 7.25 ms against 9.72 for (32, 32, 32, 8); the forward's default stayed the fastest (1.99 ms).
#: The earlier defaults stay here as candidates.
CANDIDATES = {
    "fwd": [(64, 128, 32, 4), (128, 128, 32, 8), (64, 256, 32, 8), (128, 64, 32, 4),
            (64, 128, 64, 4)],
    "dh": [(32, 128, 32, 8), (32, 64, 32, 8), (64, 64, 32, 8), (64, 32, 32, 8),
           (64, 64, 64, 8)],
    "dw": [(64, 32, 32, 8), (32, 32, 32, 8), (32, 64, 32, 8), (64, 64, 32, 8),
           (16, 64, 32, 4)],
}
KERNELS = ("fwd", "dh", "dw")


def _inputs(b: int, H: int, N: int, device: str, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    W = torch.randn(N, H, generator=g) * H ** -0.5
    bias = torch.randn(N, generator=g) * 0.1
    h = torch.randn(b, H, generator=g)
    t = torch.randint(0, N, (b,), generator=g)
    return h.to(device), W.to(device), bias.to(device), t.to(device)


def kernel_runner(k, kernel: str, h, W, bias, t, stats, precision: str):
    """A function running one full-catalog kernel and returning what it computed, a tuple of
    tensors (fresh outputs every call, so repeated calls give the same result; the dW kernel
    writes into buffers made once: allocating 1 GiB a call would be timed with it)."""
    import torch

    if kernel == "fwd":
        def run():
            loss, st = k.full_ce_forward(h, W, bias, t, precision=precision)
            return loss.reshape(1), st.m, st.inv_z, st.coef
    elif kernel == "dh":
        def run():
            return (k.full_ce_dh(h, W, bias, t, stats, precision=precision),)
    else:
        dW, db = torch.empty_like(W), torch.empty_like(bias)

        def run():
            k._launch_full_ce_dw(h, W, bias, t, stats, k._DW_STORE, dW, db, precision=precision)
            return dW, db
    return run


def _flat(parts):
    """The outputs of a run as one fp64 vector on the CPU (for the comparison, off the clock)."""
    import torch

    return torch.cat([p.detach().reshape(-1).double().cpu() for p in parts])


def sweep(device: str, b: int, H: int, N: int, precision: str, reps: int = 5) -> list:
    """One row per (kernel, candidate): ms (median of reps, CUDA events; None on the CPU),
    rel_diff (‖out - default's‖ / ‖default's‖), error (a candidate that fails to compile or
    launch: its message; the sweep goes on)."""
    import torch

    from fastgru4rec.ops.backend import load_kernels

    k = load_kernels("scoring")
    h, W, bias, t = _inputs(b, H, N, device)
    h, W, bias = k.catalog_inputs(h, W, bias)
    _, stats = k.full_ce_forward(h, W, bias, t, precision=precision)
    rows = []
    for kernel in KERNELS:
        run = kernel_runner(k, kernel, h, W, bias, t, stats, precision)
        reference = None
        for tiles in CANDIDATES[kernel]:
            row = dict(kernel=kernel, tiles=list(tiles), default=tiles == CANDIDATES[kernel][0],
                       ms=None, rel_diff=None, error=None)
            k.FULL_CE_TILES[kernel] = tiles
            try:
                out = _flat(run())
                if reference is None:
                    reference = out
                row["rel_diff"] = float((out - reference).norm()
                                        / reference.norm().clamp_min(1e-30))
                if device == "cuda":
                    times = []
                    for _ in range(reps):
                        start = torch.cuda.Event(enable_timing=True)
                        end = torch.cuda.Event(enable_timing=True)
                        start.record()
                        run()
                        end.record()
                        end.synchronize()
                        times.append(start.elapsed_time(end))
                    row["ms"] = statistics.median(times)
            except Exception as e:          # a candidate that cannot run: said, not fatal
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            finally:
                k.FULL_CE_TILES.pop(kernel, None)
            rows.append(row)
            print(_row_text(row), flush=True)
    return rows


def _row_text(row) -> str:
    from report import tiles_text      # beside this script

    tiles = tiles_text(row["tiles"])
    ms = f"{row['ms']:8.2f} ms" if row["ms"] is not None else "       - ms"
    diff = f"{row['rel_diff']:.1e}" if row["rel_diff"] is not None else "-"
    tail = f"  ERROR {row['error']}" if row["error"] else ""
    return (f"{row['kernel']:<4} {tiles:<30} {ms}  diff {diff}"
            f"{'  (default)' if row['default'] else ''}{tail}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--precision", default="tf32", choices=("tf32", "ieee", "tf32x3"))
    ap.add_argument("--n", type=int, default=1_000_000, help="items (cuda; cpu: 300)")
    ap.add_argument("--json", help="write every row here")
    args = ap.parse_args(argv)
    if args.device == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"      # before the kernels are imported
        b, H, N = 40, 48, 300
    else:
        b, H, N = 512, 256, args.n
    sys.path.insert(0, str(ROOT))
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("no GPU: torch.cuda.is_available() is False; nothing timed (--device cpu checks "
              "the candidates in the interpreter)")
        return 0
    from report import tile_sweep_best, tiles_text      # beside this script

    from fastgru4rec.bench import write_json_atomic

    print(f"full-catalog CE tiles, b {b} H {H} N {N:,} {args.precision} on {args.device}")
    rows = sweep(args.device, b, H, N, args.precision)
    doc = dict(kind="tile-sweep", b=b, H=H, N=N, device=args.device, precision=args.precision,
               rows=rows)
    bad = [r for r in rows if r["error"] or (r["rel_diff"] or 0.0) > 1e-4]
    print("\nfastest correct candidate per kernel:" if args.device == "cuda"
          else f"\n{len(rows) - len(bad)} of {len(rows)} candidates agree with the default "
               "(no timings on the CPU)")
    for best in tile_sweep_best(doc):      # the fastest that ran and agreed, as the summary
        print(f"  {best['kernel']}: {tiles_text(best['tiles'])} {best['ms']:.2f} ms"
              + (f" (x{best['default_ms'] / best['ms']:.2f} the default)"
                 if best["default_ms"] else ""))
    if args.json:
        write_json_atomic(args.json, doc)
    for r in bad:
        print(f"candidate failed: {_row_text(r)}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
