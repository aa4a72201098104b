#!/usr/bin/env python3
"""Accuracy over seeds: train and evaluate one setting once per seed, print each run and the
spread (mean, sd, min, max), optionally write JSON. The README's "Results" figures (the
seed-to-seed spread, the GRU variants) come from runs like these.

    python benchmarks/accuracy_seeds.py TRAIN TEST -pf benchmarks/params/rsc15_xe_shared_best.py \\
        --seeds 42 1 2 3 [-ps gru_variant=original] [--engine fast] [--threads 1] [--json OUT]

-ps overrides the parameter file's entries (k=v,k=v as for `fastgru4rec train`). Each run is
`GRU4Rec(**params, seed=s).fit(TRAIN)` then `evaluate(TEST)` with the conservative ranking and
cut-offs 1, 5, 10, 20. Ten epochs of rsc15-sample take about a minute a seed on one CPU thread.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fastgru4rec.bench import _git_commit, write_json_atomic  # noqa: E402
from fastgru4rec.config import GRU4RecConfig, parse_param_string, read_param_file  # noqa: E402
from fastgru4rec.fileio import check_writable  # noqa: E402

CUTOFFS = (1, 5, 10, 20)
SHOWN = (("recall", 20), ("mrr", 20), ("recall", 1))


def run_seeds(train, test, params: dict, seeds, engine: str = "auto", log=print) -> dict:
    """{"params", "runs": [{"seed", "recall", "mrr", "seconds"}], "summary": {metric@K: {mean,
    sd, min, max}}} for one training per seed (train/test: paths, DataFrames or SessionData)."""
    from fastgru4rec import GRU4Rec
    from fastgru4rec.data import as_session_data

    train = as_session_data(train)
    test = as_session_data(test, item_map=train)
    runs = []
    for seed in seeds:
        t0 = time.perf_counter()
        model = GRU4Rec(**{**params, "seed": int(seed)}).fit(train, progress=False, engine=engine)
        res = model.evaluate(test, cutoffs=list(CUTOFFS), mode="conservative")
        run = {"seed": int(seed), "recall": res["recall"], "mrr": res["mrr"],
               "seconds": time.perf_counter() - t0}
        runs.append(run)
        log(f"seed {seed:>6}: " + "  ".join(f"{m.upper() if m == 'mrr' else 'R'}@{k} "
                                           f"{run[m][k]:.4f}" for m, k in SHOWN)
            + f"  ({run['seconds']:.0f} s)")
    summary = {}
    for m in ("recall", "mrr"):
        for k in CUTOFFS:
            vals = [r[m][k] for r in runs]
            summary[f"{m}@{k}"] = {"mean": statistics.fmean(vals),
                                   "sd": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                                   "min": min(vals), "max": max(vals)}
    return {"params": params, "engine": engine, "runs": runs, "summary": summary}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("train")
    p.add_argument("test")
    p.add_argument("-pf", "--parameter-file", dest="param_file")
    p.add_argument("-ps", "--parameter-string", dest="params",
                   help="k=v,k=v overriding the parameter file")
    p.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2, 3])
    p.add_argument("--engine", default="auto", choices=["auto", "fast", "reference"])
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--json", help="write the runs and the summary here")
    args = p.parse_args(argv)

    import torch

    params = read_param_file(args.param_file) if args.param_file else {}
    if args.params:
        params.update(parse_param_string(args.params))
    params.pop("seed", None)                       # the seeds come from --seeds
    GRU4RecConfig.from_dict(params, where="parameters")   # a bad parameter: now, not per seed
    if args.json:
        check_writable(args.json, [args.train, args.test])
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    out = run_seeds(args.train, args.test, params, args.seeds, args.engine,
                    log=lambda msg: print(msg, flush=True))
    for key, s in out["summary"].items():
        if key in ("recall@20", "mrr@20", "recall@1"):
            print(f"{key:>9}: mean {s['mean']:.4f}  sd {s['sd']:.4f}  "
                  f"min {s['min']:.4f}  max {s['max']:.4f}  ({len(out['runs'])} seeds)")
    if args.json:
        # where the figures came from: the command, the commit and the date
        out["provenance"] = {"command": ["python", "benchmarks/accuracy_seeds.py",
                                         *(sys.argv[1:] if argv is None else argv)],
                             "git": _git_commit(), "created": _dt.datetime.now(
                                 _dt.timezone.utc).isoformat(timespec="seconds"),
                             "threads": torch.get_num_threads()}
        write_json_atomic(args.json, out)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, OSError) as e:   # DataError / ConfigError / WriteError: one line
        print(f"accuracy_seeds: error: {e}", file=sys.stderr)
        sys.exit(2)
