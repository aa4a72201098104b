"""The ``fastgru4rec`` command.

    fastgru4rec demo                                   synthetic data, no download: GRU4Rec vs POP
    fastgru4rec train TRAIN [-t TEST ...] [-ps k=v,k=v | -pf PARAMFILE] [-m 1 5 10 20]
                      [-e conservative] [-s MODEL] [--json]
    fastgru4rec evaluate MODEL TEST ... [-m ...] [-e ...] [--json]
    fastgru4rec recommend MODEL ITEM [ITEM ...] [-k 20] [--json]
    fastgru4rec preprocess rsc15 CLICKS OUTDIR

Bad input ends with a one-line error on stderr and exit status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Dict, List, Optional

from .config import GRU4RecConfig, parse_param_string, read_param_file
from .errors import ConfigError

EXIT_BAD_INPUT = 2


# ------------------------------------------------------------------------ output helpers
def format_metrics_table(rows: Dict[str, Dict], cutoffs: List[int]) -> str:
    """rows: name -> evaluation result dict. One line per (name, metric)."""
    name_w = max([len("model")] + [len(n) for n in rows])
    head = f"{'model':<{name_w}}  {'metric':<6} " + " ".join(f"{'@' + str(k):>8}" for k in cutoffs)
    lines = [head, "-" * len(head)]
    for name, res in rows.items():
        for metric, label in (("recall", "Recall"), ("mrr", "MRR")):
            vals = " ".join(f"{res[metric][k]:>8.4f}" for k in cutoffs)
            lines.append(f"{name:<{name_w}}  {label:<6} {vals}")
    return "\n".join(lines)


def _jsonable(res: Dict) -> Dict:
    return {k: ({str(kk): vv for kk, vv in v.items()} if isinstance(v, dict) else v)
            for k, v in res.items()}


def _params_from_args(args) -> Dict:
    if args.params and args.param_file:
        raise ConfigError("give either -ps/--parameter-string or -pf/--parameter-file, not both")
    if args.param_file:
        params = read_param_file(args.param_file)
        GRU4RecConfig.from_dict(params, where=str(args.param_file))
    elif args.params:
        params = parse_param_string(args.params)
        GRU4RecConfig.from_dict(params, where="parameter string")
    else:
        params = {}
    return params


def _add_eval_args(p: argparse.ArgumentParser):
    p.add_argument("-m", "--measure", dest="cutoffs", type=int, nargs="+", default=[1, 5, 10, 20],
                   metavar="K", help="cut-offs for Recall@K and MRR@K (default: 1 5 10 20)")
    p.add_argument("-e", "--eval-type", dest="mode", default="conservative",
                   choices=["standard", "conservative", "median"],
                   help="how ties are ranked (default: conservative, as in the papers)")
    p.add_argument("--eval-batch-size", type=int, default=512, help="lanes during evaluation")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    _add_threads_arg(p)


def _add_threads_arg(p: argparse.ArgumentParser):
    # The per-step ops of GRU4Rec are small: on a busy machine one thread is often faster.
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's choice)")


def _add_data_args(p: argparse.ArgumentParser):
    p.add_argument("--session-key", default="SessionId")
    p.add_argument("--item-key", default="ItemId")
    p.add_argument("--time-key", default="Time")
    p.add_argument("--sep", default=None, help="field separator (default: by file extension)")


def _check_eval_args(args):
    from .evaluate import MetricAccumulator

    MetricAccumulator(args.cutoffs, args.mode)   # raises on bad cut-offs / mode
    if args.eval_batch_size <= 0:
        raise ConfigError(f"--eval-batch-size must be positive (got {args.eval_batch_size})")


def _read_kw(args) -> Dict:
    return dict(session_key=args.session_key, item_key=args.item_key, time_key=args.time_key,
                sep=args.sep)


def _log(args, msg: str):
    if not getattr(args, "json", False) and not getattr(args, "quiet", False):
        print(msg, file=sys.stderr)


# ------------------------------------------------------------------------ commands
def cmd_train(args) -> int:
    from .data import read_sessions
    from .estimator import GRU4Rec

    params = _params_from_args(args)
    model = GRU4Rec(device=args.device, **params)
    _check_eval_args(args)  # before training, not after an hour of it
    t0 = time.perf_counter()
    train = read_sessions(args.train, **_read_kw(args))
    _log(args, f"train: {train.n_events:,} events, {train.n_sessions:,} sessions, "
               f"{train.n_items:,} items ({time.perf_counter() - t0:.1f} s)")
    tests = [read_sessions(t, item_map=train, **_read_kw(args)) for t in args.test or []]

    def on_epoch(s):
        _log(args, f"epoch {s.epoch:>3}: loss {s.loss:.4f}  {s.events_per_s:,.0f} events/s  "
                   f"{s.batches_per_s:,.0f} mb/s  ({s.seconds:.1f} s)")

    model.fit(train, progress=not (args.json or args.quiet), on_epoch=on_epoch,
              engine=args.engine)
    out = {"config": model.config.to_dict(),
           "epochs": [dict(epoch=s.epoch, loss=s.loss, events_per_s=s.events_per_s,
                           batches_per_s=s.batches_per_s, seconds=s.seconds) for s in model.history]}
    if args.save_model:
        model.save(args.save_model)
        _log(args, f"saved model to {args.save_model}")
        out["model"] = str(args.save_model)
    results = {}
    for path, test in zip(args.test or [], tests):
        results[str(path)] = model.evaluate(test, args.cutoffs, args.mode, args.eval_batch_size)
    out["results"] = {k: _jsonable(v) for k, v in results.items()}
    _print_results(args, out, results)
    return 0


def cmd_evaluate(args) -> int:
    from .estimator import GRU4Rec

    _check_eval_args(args)
    model = GRU4Rec.load(args.model, device=args.device)
    results = {str(t): model.evaluate(t, args.cutoffs, args.mode, args.eval_batch_size,
                                      **_read_kw(args)) for t in args.test}
    _print_results(args, {"results": {k: _jsonable(v) for k, v in results.items()}}, results)
    return 0


def _print_results(args, out: Dict, results: Dict):
    if args.json:
        print(json.dumps(out, indent=1))
        return
    for path, res in results.items():
        print(f"\n{path}: {res['n_events']:,} evaluation points, {res['mode']} ranking"
              + (f", {res.get('n_unknown_events', 0):,} events of unknown items dropped"
                 if res.get("n_unknown_events") else ""))
        print(format_metrics_table({"GRU4Rec": res}, args.cutoffs))


def cmd_recommend(args) -> int:
    from .estimator import GRU4Rec

    model = GRU4Rec.load(args.model, device=args.device)
    recs = model.recommend(args.items, k=args.k, exclude_seen=args.exclude_seen)
    if args.json:
        print(json.dumps({"session": args.items, "recommendations": recs}))
    else:
        print("\n".join(recs))
    return 0


def cmd_demo(args) -> int:
    from .estimator import GRU4Rec
    from .evaluate import DEFAULT_CUTOFFS
    from .synthetic import synthetic_split

    t0 = time.perf_counter()
    train, test = synthetic_split(seed=args.seed)
    _log(args, f"synthetic data (seed {args.seed}): train {train.n_events:,} events / "
               f"{train.n_sessions:,} sessions / {train.n_items:,} items; "
               f"test {test.n_events:,} events / {test.n_sessions:,} sessions")
    params = dict(layers=[100], loss="cross-entropy", batch_size=64, dropout_p_hidden=0.2,
                  learning_rate=0.1, momentum=0.1, n_sample=512, sample_alpha=0.5, logq=1.0,
                  n_epochs=args.epochs, elu_param=0.0, seed=args.seed)
    model = GRU4Rec(device=args.device, **params)
    model.fit(train, progress=not (args.json or args.quiet), on_epoch=lambda s: _log(
        args, f"epoch {s.epoch}: loss {s.loss:.4f}  {s.events_per_s:,.0f} events/s"))
    cutoffs = list(DEFAULT_CUTOFFS)
    results = {"GRU4Rec": model.evaluate(test, cutoffs, "conservative")}
    results.update(_demo_baselines(train, test, cutoffs))
    seconds = time.perf_counter() - t0
    if args.json:
        print(json.dumps({"params": params, "seconds": seconds,
                          "results": {k: _jsonable(v) for k, v in results.items()}}, indent=1))
    else:
        print(f"\nnext-item prediction on synthetic sessions, {results['GRU4Rec']['n_events']:,} "
              f"evaluation points, conservative full ranking ({seconds:.0f} s in all)")
        print(format_metrics_table(results, cutoffs))
    return 0


def _demo_baselines(train, test, cutoffs) -> Dict[str, Dict]:
    from .baselines import run_baselines

    return run_baselines(train, test, cutoffs=cutoffs, mode="conservative", progress=False)


# ------------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fastgru4rec", description="GRU4Rec, faithful and fast.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    d = sub.add_parser("demo", help="train and evaluate on built-in synthetic data (no download)")
    d.add_argument("--epochs", type=int, default=3)
    d.add_argument("--seed", type=int, default=42)
    d.add_argument("--device", default="cpu")
    d.add_argument("--json", action="store_true")
    d.add_argument("-q", "--quiet", action="store_true")
    # The demo's model is small: one thread is as fast on a quiet machine and far faster on
    # a busy one (two torch threads contending with other jobs for 2 cores crawl).
    d.add_argument("--threads", type=int, default=1, help="CPU threads for torch (default: 1)")
    d.set_defaults(func=cmd_demo)

    t = sub.add_parser("train", help="train GRU4Rec on a session file")
    t.add_argument("train", help="training events (.tsv/.csv/.parquet)")
    t.add_argument("-t", "--test", nargs="+", help="test files evaluated after training")
    t.add_argument("-ps", "--parameter-string", dest="params",
                   help="parameters as k=v,k=v (lists as 100/100, booleans True/False)")
    t.add_argument("-pf", "--parameter-file", dest="param_file",
                   help="parameter file: JSON, or Python assigning gru4rec_params = OrderedDict(...)")
    t.add_argument("-s", "--save-model", help="write the trained model to this file")
    t.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 or auto")
    t.add_argument("--engine", default="auto", choices=["auto", "fast", "reference"],
                   help="training loop: fast (CUDA graphs on a GPU; on the CPU the reference "
                        "step, same results) or reference (the eager loop); auto = fast")
    t.add_argument("-q", "--quiet", action="store_true")
    _add_eval_args(t)
    _add_data_args(t)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="evaluate a saved model on test files")
    e.add_argument("model")
    e.add_argument("test", nargs="+")
    e.add_argument("--device", default="cpu")
    _add_eval_args(e)
    _add_data_args(e)
    e.set_defaults(func=cmd_evaluate)

    r = sub.add_parser("recommend", help="top-k items for a session prefix")
    r.add_argument("model")
    r.add_argument("items", nargs="+", help="the session's item ids so far, oldest first")
    r.add_argument("-k", type=int, default=20)
    r.add_argument("--exclude-seen", action="store_true")
    r.add_argument("--device", default="cpu")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_recommend)

    # Subcommands that live beside their implementation. Imported directly: a broken module
    # must fail loudly, not drop its subcommand.
    from . import baselines, bench, preprocess

    for module in (preprocess, baselines, bench):
        module.register_cli(sub)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "threads", None) is not None:
            if args.threads <= 0:
                raise ConfigError(f"--threads must be positive (got {args.threads})")
            import torch
            torch.set_num_threads(args.threads)
        return int(args.func(args) or 0)
    except (ValueError, OSError) as e:
        # DataError / ConfigError / bad arguments: one line, no traceback
        print(f"fastgru4rec {args.command}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RuntimeError as e:  # e.g. training diverged, model not trained
        print(f"fastgru4rec {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"fastgru4rec {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
