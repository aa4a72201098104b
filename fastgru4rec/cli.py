"""The ``fastgru4rec`` command.

    fastgru4rec demo                                   synthetic data, no download: GRU4Rec vs POP
    fastgru4rec train TRAIN [-t TEST ...] [-ps k=v,k=v | -pf PARAMFILE] [-m 1 5 10 20]
                      [-e conservative] [-s MODEL] [--checkpoint CKPT] [--resume CKPT]
                      [--eval-every-epoch] [--max-steps N] [--json]
    fastgru4rec evaluate MODEL TEST ... [-m ...] [-e ...] [--json] [-q]
    fastgru4rec recommend MODEL ITEM [ITEM ...] [-k 20] [--json]
    fastgru4rec recommend MODEL --sessions EVENTS [-k 20] [-o OUT.tsv|OUT.parquet]
    fastgru4rec preprocess rsc15 CLICKS OUTDIR
    fastgru4rec info [--json]                          versions, extension, GPUs, backends

Bad input ends with a one-line error on stderr and exit status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Dict, Iterator, List, Optional

from .config import GRU4RecConfig, parse_param_string, read_param_file
from .errors import ConfigError, one_line
from .fileio import check_writable

EXIT_BAD_INPUT = 2
# 141: what a shell reports for `... | head -1` (SIGPIPE is 13; Windows' signal module lacks it)
EXIT_BROKEN_PIPE = 128 + getattr(signal, "SIGPIPE", 13)


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


#: options of the authors' run.py that do something else here: (flags, whether it takes a
#: value there, what to do instead)
AUTHORS_OTHER_OPTIONS = (
    (("-l", "--load_model"), False, "loads a model instead of training: use `fastgru4rec "
                                    "evaluate MODEL TEST ...`"),
    (("-g", "--gru4rec_model"), True, "picks the authors' implementation module: this command "
                                      "is fastgru4rec's"),
    (("-pm", "--primary_metric"), True, "names the metric to log: every metric is printed (-m, "
                                        "-e; --json for scripts)"),
    (("-lpm", "--log_primary_metric"), False, "logs the primary metric: every metric is "
                                              "printed (-m, -e; --json for scripts)"),
)


def _authors_dest(flags) -> str:
    return "authors_" + flags[1][2:]


def _refuse_authors_options(args) -> None:
    for flags, _, instead in AUTHORS_OTHER_OPTIONS:
        if getattr(args, _authors_dest(flags), None) not in (None, False):
            raise ConfigError(f"{'/'.join(flags)}: the authors' run.py option {instead}")


def _params_from_args(args) -> Dict:
    _refuse_authors_options(args)
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
    if getattr(args, "sample_store_size", None) is not None:   # run.py's -ss
        if "sample_store_size" in params:
            raise ConfigError("-ss/--sample-store-size and the parameters both set "
                              "sample_store_size: give it once")
        params["sample_store_size"] = args.sample_store_size
        GRU4RecConfig.from_dict(params, where="-ss/--sample-store-size")
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
                   help="CPU threads for torch (default or 0: leave torch's setting)")


def add_data_options(p: argparse.ArgumentParser, sep: bool = True):
    """The options of reading event files (read_events' keywords), for every command that reads
    them; data_options(args) gives the keywords. sep=False: a command whose format fixes it."""
    # -sk/-ik/-tk: the authors' run.py spellings (its --session_key & co: AUTHORS_LONG_OPTIONS)
    p.add_argument("--session-key", "-sk", default="SessionId", metavar="COLUMN",
                   help="column of the session ids (default SessionId)")
    p.add_argument("--item-key", "-ik", default="ItemId", metavar="COLUMN",
                   help="column of the item ids (default ItemId)")
    p.add_argument("--time-key", "-tk", default="Time", metavar="COLUMN",
                   help="column of the times in seconds (default Time)")
    if sep:
        p.add_argument("--sep", default=None,
                       help="field separator of text files, one character; '\\t' or 'tab' for a "
                            "tab (default: by file extension)")


def _check_eval_args(args):
    from .evaluate import MetricAccumulator, check_eval_batch_size

    MetricAccumulator(args.cutoffs, args.mode)   # raises on bad cut-offs / mode
    check_eval_batch_size(args.eval_batch_size)


#: what a shell passes for --sep '\t' (two characters) and the separator meant
_SEPARATOR_ESCAPES = {"\\t": "\t", "tab": "\t", "TAB": "\t"}


def data_options(args) -> Dict:
    """read_events' keywords from add_data_options' options. Checked here as well as in
    read_events, to name the options rather than the API's names."""
    if len({args.session_key, args.item_key, args.time_key}) < 3:
        raise ConfigError(f"--session-key {args.session_key!r}, --item-key {args.item_key!r} and "
                          f"--time-key {args.time_key!r} must name three different columns")
    from .data import SEPARATOR_RULE, valid_separator   # (pyarrow: imported when needed)

    if getattr(args, "sep", None) in _SEPARATOR_ESCAPES:   # --sep '\t' typed as two characters
        args.sep = _SEPARATOR_ESCAPES[args.sep]
    if getattr(args, "sep", None) is not None and not valid_separator(args.sep):
        raise ConfigError(f"--sep must be {SEPARATOR_RULE} (got {args.sep!r})")
    return dict(session_key=args.session_key, item_key=args.item_key, time_key=args.time_key,
                **({"sep": args.sep} if "sep" in args else {}))


def _check_save_path(path: Optional[str], inputs=()):
    """Before training, not after an hour of it: a destination that cannot be written, or that
    is one of the command's input files."""
    if path is None:
        return
    if path == "":
        raise ConfigError("-s/--save-model: the path is empty")
    check_writable(path, inputs)


def require_positive(value: Optional[int], option: str) -> None:
    """ConfigError naming the command-line option unless its integer value, when given (not
    None), is positive."""
    if value is not None and value <= 0:
        raise ConfigError(f"{option} must be positive (got {value})")


#: train says "reading FILE (N MB) ..." before reading a training file larger than this
READ_NOTICE_BYTES = 100 * 2**20


def _log(args, msg: str):
    if not getattr(args, "json", False) and not getattr(args, "quiet", False):
        print(msg, file=sys.stderr)


# ------------------------------------------------------------------------ commands
def cmd_train(args) -> int:
    from .data import read_sessions, require_evaluable
    from .estimator import GRU4Rec, is_checkpoint, resolve_device

    params = _params_from_args(args)
    inputs = [args.train] + list(args.test or [])
    require_positive(args.max_steps, "--max-steps")
    if args.max_steps is not None:
        for given, option in ((args.checkpoint, "--checkpoint"), (args.resume, "--resume")):
            if given is not None:
                raise ConfigError(f"--max-steps (a trial run) does not go with {option}: an "
                                  "epoch cut short could not be resumed")
    if args.resume is not None:
        # the configuration is the checkpoint's; only the number of epochs may grow
        extra = sorted(set(params) - {"n_epochs"})
        if extra:
            raise ConfigError(f"--resume: the configuration comes from the checkpoint; only "
                              f"n_epochs may be given (got {', '.join(extra)})")
        if args.resume == "":
            raise ConfigError("--resume: the path is empty")
        if os.path.isdir(args.resume):
            raise ConfigError(f"--resume {args.resume}: is a directory, not a checkpoint file")
        if not os.path.exists(args.resume):
            raise ConfigError(f"--resume {args.resume}: no such checkpoint file")
        if not os.path.isfile(args.resume):
            raise ConfigError(f"--resume {args.resume}: not a regular file")
        resolve_device(args.device)
        model = None
    else:
        model = GRU4Rec(device=args.device, **params)
    _check_eval_args(args)  # before training, not after an hour of it
    _check_save_path(args.save_model, inputs + ([args.resume] if args.resume is not None else []))
    if args.checkpoint is not None:
        if args.checkpoint == "":
            raise ConfigError("--checkpoint: the path is empty")
        check_writable(args.checkpoint, inputs)
        if args.save_model and (os.path.realpath(args.save_model)
                                == os.path.realpath(args.checkpoint)):
            raise ConfigError("-s/--save-model and --checkpoint name the same file (the final "
                              "model would replace the checkpoint's training state)")
        resumed_here = args.resume is not None and os.path.exists(args.checkpoint) \
            and os.path.samefile(args.resume, args.checkpoint)
        if os.path.exists(args.checkpoint) and not resumed_here:
            # a rerun of the command would replace it at its first epoch: the run it holds lost
            raise ConfigError(f"--checkpoint {args.checkpoint}: exists (continue its training "
                              "with --resume and this path, or remove it or give another "
                              "path for a new run)")
    if args.save_model and is_checkpoint(args.save_model):
        # the final model (no training state) would replace it: that run could not be resumed
        raise ConfigError(f"-s/--save-model {args.save_model}: is a checkpoint (of another "
                          "run, which could not be resumed once replaced): remove it or give "
                          "another path")
    if args.eval_every_epoch and not args.test:
        raise ConfigError("--eval-every-epoch evaluates the first -t/--test file: give one")
    t0 = time.perf_counter()
    read_kw = data_options(args)
    # a large file takes a while, more if not already grouped by session and time (12M rows,
    # ~300 MB: ~14 s): said first. Not for small files: a bad one gets its one error line only.
    size = os.path.getsize(args.train) if os.path.isfile(args.train) else 0
    if size > READ_NOTICE_BYTES:
        _log(args, f"reading {args.train} ({size / 2**20:,.0f} MB) ...")
    train = read_sessions(args.train, **read_kw)
    _log(args, f"train: {train.n_events:,} events, {train.n_sessions:,} sessions, "
               f"{train.n_items:,} items ({time.perf_counter() - t0:.1f} s)")
    tests = [read_sessions(t, item_map=train, **read_kw) for t in args.test or []]
    for test in tests:
        require_evaluable(test)

    top_k = max(args.cutoffs)

    trained_here = []   # the epochs this call trains (a resume may train none)

    def on_epoch(s):
        trained_here.append(s)
        metrics = (f"  Recall@{top_k} {s.metrics['recall'][top_k]:.4f}  MRR@{top_k} "
                   f"{s.metrics['mrr'][top_k]:.4f}" if s.metrics else "")
        _log(args, f"epoch {s.epoch:>3}: loss {s.loss:.4f}  {s.events_per_s:,.0f} events/s  "
                   f"{s.batches_per_s:,.0f} mb/s  ({s.seconds:.1f} s){metrics}")

    progress = not (args.json or args.quiet)
    # --eval-every-epoch: the first test file after every epoch, with the -m / -e options
    validation = dict(validation=tests[0], validation_kw=dict(
        cutoffs=args.cutoffs, mode=args.mode, batch_size=args.eval_batch_size)) \
        if args.eval_every_epoch else {}
    if args.resume is not None:
        model = GRU4Rec.resume(args.resume, train, device=args.device,
                               n_epochs=params.get("n_epochs"), progress=progress,
                               on_epoch=on_epoch, engine=args.engine,
                               save_checkpoint=args.checkpoint or True, **validation)
        _log(args, f"resumed {args.resume}: {len(model.history)} of "
                   f"{model.config.n_epochs} epochs trained")
    else:
        model.fit(train, progress=progress, on_epoch=on_epoch, engine=args.engine,
                  checkpoint=args.checkpoint, max_steps=args.max_steps, **validation)
        if args.max_steps is not None:
            done = sum(s.n_steps for s in model.history)
            _log(args, f"trial run: stopped after {done:,} steps (--max-steps {args.max_steps:,})"
                       f", {len(model.history)} of {model.config.n_epochs} epochs begun")
    out = {"config": model.config.to_dict(),
           "epochs": [dict(epoch=s.epoch, loss=s.loss, events_per_s=s.events_per_s,
                           batches_per_s=s.batches_per_s, seconds=s.seconds,
                           **({"metrics": _jsonable(s.metrics)} if s.metrics else {}))
                      for s in model.history]}
    if args.save_model:
        model.save(args.save_model)
        _log(args, f"saved model to {args.save_model}")
        out["model"] = str(args.save_model)
    results = {}
    for n, (path, test) in enumerate(zip(args.test or [], tests)):
        if n == 0 and trained_here and trained_here[-1].metrics is not None:
            # --eval-every-epoch has just evaluated this model on this file with these options
            results[str(path)] = trained_here[-1].metrics
            continue
        results[str(path)] = model.evaluate(test, args.cutoffs, args.mode, args.eval_batch_size,
                                            progress=not (args.json or args.quiet))
    out["results"] = {k: _jsonable(v) for k, v in results.items()}
    _print_results(args, out, results)
    return 0


def cmd_evaluate(args) -> int:
    from .data import SessionData, read_sessions, require_evaluable
    from .estimator import GRU4Rec

    _check_eval_args(args)
    read_kw = data_options(args)
    model = GRU4Rec.load(args.model, device=args.device)
    item_map = SessionData.item_map_only(model.item_ids, model.supports, "<model item map>")
    # Every test file is read and checked before any is evaluated: a bad last file fails fast.
    tests = {}
    for path in args.test:
        test = read_sessions(path, item_map=item_map, **read_kw)
        require_evaluable(test)   # else every metric would be a meaningless 0
        tests[str(path)] = test
    progress = not (args.json or args.quiet)
    results = {path: model.evaluate(test, args.cutoffs, args.mode, args.eval_batch_size,
                                    progress=progress) for path, test in tests.items()}
    # --json names what was measured: the model, its catalog, the cut-offs and tie mode
    _print_results(args, {"model": str(args.model), "n_items": len(model.item_ids),
                          "cutoffs": list(args.cutoffs), "mode": args.mode,
                          "results": {k: _jsonable(v) for k, v in results.items()}}, results)
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

    sessions = args.sessions is not None
    if sessions and not args.sessions:
        raise ConfigError("--sessions needs the name of an events file (got '')")
    if bool(args.items) == sessions:
        raise ConfigError("give the session's item ids, or --sessions FILE for every session "
                          "of a file, not both" if args.items else
                          "give the session's item ids, or --sessions FILE")
    if sessions:
        return _recommend_sessions(args)
    for given, option in ((args.output, "-o/--output"), (args.batch_size, "--batch-size")):
        if given is not None:
            raise ConfigError(f"{option} goes with --sessions (one session prints to stdout)")
    model = GRU4Rec.load(args.model, device=args.device)
    recs = model.recommend(args.items, k=args.k, exclude_seen=args.exclude_seen,
                           unknown="skip")   # said below, in the CLI's warning form
    known_ids = model._item_map().item_index()      # recommend's own (cached) id index
    unknown = [i for i in args.items if i not in known_ids]
    if unknown:   # skipped by recommend(): say so, the output would imply they were used
        print(f"fastgru4rec recommend: warning: {len(unknown)} item(s) unknown to the model "
              f"skipped: {' '.join(unknown[:10])}{' ...' if len(unknown) > 10 else ''}",
              file=sys.stderr)
    if args.json:
        print(json.dumps({"session": [i for i in args.items if i in known_ids],
                          "unknown_items": unknown, "recommendations": recs}))
    else:   # one id a line, quoted as in --sessions' TSV when it holds a line break
        print("\n".join(map(_tsv_field, recs)))
    return 0


def _recommend_sessions(args) -> int:
    """recommend --sessions: top-k for every session of an events file, as TSV rows
    SessionId, Rank (1-based), ItemId, Score, to -o (atomically) or stdout; --json: one JSON
    object {session id: [item ids]}."""
    from .estimator import GRU4Rec
    from .evaluate import check_eval_batch_size
    from .fileio import atomic_write

    require_positive(args.k, "-k")
    batch_size = 512 if args.batch_size is None else args.batch_size
    check_eval_batch_size(batch_size, "--batch-size")
    suffix = Path(args.output).suffix.lower() if args.output is not None else ""
    parquet, as_json = suffix == ".parquet", args.json or suffix == ".json"
    if args.output is not None:
        check_writable(args.output, [args.model, args.sessions])
        if args.json and parquet:
            raise ConfigError("--json and a Parquet -o/--output: give one of them")
        if suffix == ".csv":
            raise ConfigError(f"-o {args.output}: recommendations are written tab-separated "
                              f"(.tsv), as JSON (.json or --json) or as Parquet (.parquet), "
                              f"not as .csv")
    model = GRU4Rec.load(args.model, device=args.device)
    res = model.recommend_sessions(args.sessions, k=args.k, exclude_seen=args.exclude_seen,
                                   batch_size=batch_size,
                                   progress=not (args.quiet or args.json),
                                   **data_options(args))
    if res["n_unknown_events"]:
        print(f"fastgru4rec recommend: warning: {res['n_unknown_events']:,} event(s) of items "
              f"unknown to the model skipped", file=sys.stderr)
    if parquet:
        _write_recommendations_parquet(args.output, res)
    else:
        pieces = _recommendation_text(res, as_json)
        if args.output is None:
            _write_in_chunks(sys.stdout, pieces)
            return 0
        with atomic_write(args.output, "w") as f:
            _write_in_chunks(f, pieces)
    _log(args, f"recommendations for {len(res['session_id']):,} sessions written to "
               f"{args.output}")
    return 0


def _recommendation_text(res, as_json: bool) -> Iterator[str]:
    """recommend_sessions' result as text, a session at a time: TSV rows SessionId, Rank
    (1-based), ItemId, Score under a header, or one JSON object {session id: [item ids]}
    (json.dumps' own layout). Generated, so that a large -k never holds the whole text."""
    rows = zip(res["session_id"], res["items"], res["scores"])
    if as_json:
        yield "{"
        for n, (sid, items, _) in enumerate(rows):
            yield (f"{', ' if n else ''}{json.dumps(str(sid))}: "
                   f"{json.dumps([i for i in items if i is not None])}")
        yield "}\n"
        return
    yield "SessionId\tRank\tItemId\tScore\n"
    for sid, items, scores in rows:
        sid = _tsv_field(str(sid))
        yield "".join(f"{sid}\t{r + 1}\t{_tsv_field(item)}\t{score:.6g}\n"
                      for r, (item, score) in enumerate(zip(items, scores)) if item is not None)


def _write_in_chunks(f, pieces: Iterator[str], chunk: int = 1 << 20) -> None:
    """Write the pieces to the text file f in writes of about ``chunk`` characters. When f is
    stdout on a real file descriptor, through os.write until every byte is taken: a reader that
    stops early (`| head`) then raises BrokenPipeError (exit 141); a buffered text write cut
    short by the closed pipe returned without an error, and the run exited 0."""
    try:
        fd = f.fileno() if f is sys.stdout else None
    except (AttributeError, OSError, ValueError):       # a replaced stdout (tests, notebooks)
        fd = None
    if fd is not None:
        f.flush()
        encoding = f.encoding or "utf-8"

    def emit(text: str) -> None:
        if fd is None:
            f.write(text)
            return
        data = memoryview(text.encode(encoding))
        while data:
            data = data[os.write(fd, data):]

    buf, size = [], 0
    for piece in pieces:
        buf.append(piece)
        size += len(piece)
        if size >= chunk:
            emit("".join(buf))
            buf, size = [], 0
    emit("".join(buf))


def _tsv_field(text: str) -> str:
    """A TSV field: quoted as CSV readers expect (pyarrow, pandas, Python's csv) when the id
    holds a tab, a line break or a quote (ids read from Parquet or quoted CSV can), else as
    it is."""
    if any(c in text for c in '\t\n\r"'):
        return '"' + text.replace('"', '""') + '"'
    return text


def _write_recommendations_parquet(path, res) -> None:
    """recommend_sessions' result as a Parquet file (atomically) with the TSV's columns:
    SessionId string, Rank int32 (1-based), ItemId string, Score float32; one row per
    recommended item (rows a short catalog left empty are not written)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .fileio import atomic_write

    items = res["items"]                                       # object (S, k), None: empty
    S, k = items.shape
    valid = (items != None).ravel()                            # noqa: E711 (elementwise)
    table = pa.table({
        "SessionId": pa.array(np.repeat(res["session_id"], k)[valid].astype(str), pa.string()),
        "Rank": pa.array(np.tile(np.arange(1, k + 1, dtype=np.int32), S)[valid]),
        "ItemId": pa.array(items.ravel()[valid].astype(str), pa.string()),
        "Score": pa.array(res["scores"].ravel()[valid].astype(np.float32)),
    })
    with atomic_write(path) as f:
        pq.write_table(table, f)


def environment_report() -> Dict:
    """What `fastgru4rec info` reports: versions, whether the C++ extension loaded (else why
    not), the GPUs torch sees, and which implementation the ops run on CPU and CUDA tensors."""
    import torch

    from . import native
    from .bench import environment_info
    from .ops.backend import ENV_BACKEND, reference_forced, triton_available

    cuda = torch.cuda.is_available()
    with warnings.catch_warnings():   # a missing extension is this report's subject
        warnings.simplefilter("ignore", RuntimeWarning)
        info = environment_info("cuda" if cuda else "cpu")
    for key in ("device", "device_name", "loadavg", "driver", "gpu_memory_gib",
                "gpu_capability", "cudnn"):
        info.pop(key, None)
    info["native_extension"] = native.available()
    info["native_extension_error"] = (None if info["native_extension"]
                                      else one_line(native.load_error()))
    info["cuda_devices"] = [
        {"name": props.name, "capability": f"{props.major}.{props.minor}",
         "memory_gib": round(props.total_memory / 2 ** 30, 1)}
        for props in map(torch.cuda.get_device_properties, range(torch.cuda.device_count()))
    ] if cuda else []
    # ops.backend.resolve_backend's rule for "auto", spelled out per device type
    gpu_ops = "torch" if reference_forced() or not triton_available() else "triton"
    info["ops_backend"] = {"cpu": "torch", "cuda": gpu_ops}
    info["settings"] = {k: os.environ[k] for k in (ENV_BACKEND, "FASTGRU4REC_NO_NATIVE",
                                                    "FASTGRU4REC_NATIVE_PATH",
                                                    "FASTGRU4REC_DATA") if k in os.environ}
    return info


def cmd_info(args) -> int:
    info = environment_report()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"fastgru4rec {info['fastgru4rec']} (python {info['python']}, torch {info['torch']}, "
          f"numpy {info['numpy']}, triton {info['triton'] or 'not installed'})")
    print("native extension: " + ("loaded (C++ session batcher, sampler, row optimizer)"
                                  if info["native_extension"] else
                                  f"unavailable, the slower Python batcher and sampler run "
                                  f"({info['native_extension_error']})"))
    print(f"CPU: {info['cpu']}, {info['cpu_count']} cores, torch threads "
          f"{info['torch_threads']}")
    if info["cuda_devices"]:
        for i, d in enumerate(info["cuda_devices"]):
            print(f"cuda:{i}: {d['name']} (compute capability {d['capability']}, "
                  f"{d['memory_gib']} GiB), CUDA runtime {info['cuda_runtime']}")
    else:
        print("CUDA: no GPU visible to torch" + ("" if info["cuda_runtime"] else
                                                 " (a CPU-only torch build)"))
    names = {"torch": "the plain-torch reference", "triton": "the fused Triton kernels"}
    print(f"ops: CPU tensors run {names['torch']}, CUDA tensors "
          f"{names[info['ops_backend']['cuda']]}"
          + ("" if info["triton"] else " (triton is not installed)"))
    for key, value in info["settings"].items():
        print(f"{key}={value}")
    return 0


def cmd_demo(args) -> int:
    from .estimator import GRU4Rec
    from .evaluate import DEFAULT_CUTOFFS
    from .synthetic import synthetic_split

    t0 = time.perf_counter()
    params = dict(layers=[100], loss="cross-entropy", batch_size=64, dropout_p_hidden=0.2,
                  learning_rate=0.1, momentum=0.1, n_sample=512, sample_alpha=0.5, logq=1.0,
                  n_epochs=args.epochs, elu_param=0.0, seed=args.seed)
    # named as the option (the parameters' rule would say n_epochs)
    require_positive(args.epochs, "--epochs")
    # validates --seed (by the parameters' rules) before the data is generated
    model = GRU4Rec(device=args.device, **params)
    train, test = synthetic_split(seed=args.seed)
    _log(args, f"synthetic data (seed {args.seed}): train {train.n_events:,} events / "
               f"{train.n_sessions:,} sessions / {train.n_items:,} items; "
               f"test {test.n_events:,} events / {test.n_sessions:,} sessions")
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
    from . import __version__

    p = argparse.ArgumentParser(prog="fastgru4rec", description="GRU4Rec, faithful and fast.")
    p.add_argument("--version", action="version", version=f"fastgru4rec {__version__}")
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
    # the authors' run.py spellings are accepted too (--parameter_string, --save_model, -ss, -d,
    # -sk/-ik/-tk): a run.py command line works with `python run.py` replaced by `fastgru4rec
    # train`; its options for something else (-l, -g, -pm, -lpm) are refused with a hint
    t.add_argument("-ps", "--parameter-string", dest="params",
                   help="parameters as k=v,k=v (lists as 100/100, booleans True/False; a "
                        "key given again overrides the earlier value)")
    t.add_argument("-pf", "--parameter-file", dest="param_file",
                   help="parameter file: JSON (.json, or text starting with '{'), or Python "
                        "assigning gru4rec_params = OrderedDict(...)")
    t.add_argument("-s", "--save-model", help="write the trained model to this file")
    t.add_argument("-ss", "--sample-store-size", type=int, default=None,
                   metavar="N", help="the parameter sample_store_size (as in the authors' run.py)")
    t.add_argument("--checkpoint", metavar="PATH",
                   help="write a checkpoint here after every epoch (a model file that also "
                        "holds the training state; --resume continues it)")
    t.add_argument("--resume", metavar="PATH",
                   help="continue the training in this checkpoint, on the same training data "
                        "and kind of device, exactly as if it had not stopped; the "
                        "configuration is the checkpoint's (-ps n_epochs=N may extend it); "
                        "keeps writing the checkpoint there unless --checkpoint says elsewhere")
    t.add_argument("--max-steps", type=int, default=None, metavar="N",
                   help="a trial run: stop after N mini-batch steps in all (the epoch it ends "
                        "in is cut short; not with --checkpoint or --resume)")
    t.add_argument("--eval-every-epoch", action="store_true",
                   help="evaluate the first -t file after every epoch (shown with the epoch's "
                        "line, in --json's epochs, and kept in checkpoints)")
    t.add_argument("-d", "--device", default="cpu", help="cpu, cuda, cuda:1 or auto")
    for flags, takes_value, _ in AUTHORS_OTHER_OPTIONS:   # as run.py has them
        kind = dict(nargs="?", const=True) if takes_value else dict(action="store_true")
        t.add_argument(*flags, dest=_authors_dest(flags), default=None, help=argparse.SUPPRESS,
                       **kind)
    t.add_argument("--engine", default="auto", choices=["auto", "fast", "reference"],
                   help="training loop: fast (with the shared embedding and sampled negatives "
                        "the fused step with its explicit backward, otherwise the autograd "
                        "step, on the CPU the reference step; on a GPU either replayed in CUDA "
                        "graphs) or reference (the eager loop); auto = fast")
    t.add_argument("-q", "--quiet", action="store_true")
    _add_eval_args(t)
    add_data_options(t)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="evaluate a saved model on test files")
    e.add_argument("model", help="a model file saved by train -s (or GRU4Rec.save)")
    e.add_argument("test", nargs="+", help="test events files (.tsv/.csv/.parquet), each "
                   "evaluated alone; items unknown to the model are dropped")
    e.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    e.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _add_eval_args(e)
    add_data_options(e)
    e.set_defaults(func=cmd_evaluate)

    r = sub.add_parser("recommend", help="top-k items for a session prefix")
    r.add_argument("model", help="a model file saved by train -s (or GRU4Rec.save)")
    r.add_argument("items", nargs="*", help="the session's item ids so far, oldest first "
                   "(ids unknown to the model are skipped, with a warning)")
    r.add_argument("--sessions", metavar="FILE",
                   help="instead of ITEMS: recommend for every session of this events file "
                        "(.tsv/.csv/.parquet), after its last event; TSV rows SessionId, Rank, "
                        "ItemId, Score")
    r.add_argument("-o", "--output", metavar="FILE",
                   help="with --sessions: write there (atomically) instead of stdout: TSV, "
                        "or by the name's ending Parquet (.parquet, the same columns) or JSON "
                        "(.json)")
    r.add_argument("--batch-size", type=int, default=None,
                   help="with --sessions: sessions run side by side (default: 512)")
    r.add_argument("-k", type=int, default=20,
                   help="how many items (default 20; at most the catalog's size)")
    r.add_argument("--exclude-seen", action="store_true",
                   help="leave out the items the session already holds")
    r.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    r.add_argument("--json", action="store_true",
                   help="JSON: one session: {session, unknown_items, recommendations}; "
                        "--sessions: {session id: [item ids]}")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bar (--sessions)")
    _add_threads_arg(r)
    add_data_options(r)
    r.set_defaults(func=cmd_recommend)

    i = sub.add_parser("info", help="versions, the C++ extension, GPUs and which "
                       "implementation the ops run (for bug reports)")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_info)

    # Subcommands that live beside their implementation. Imported directly: a broken module
    # must fail loudly, not drop its subcommand.
    from . import baselines, bench, preprocess

    for module in (preprocess, baselines, bench):
        module.register_cli(sub)
    return p


def _is_out_of_memory(e: BaseException) -> bool:
    """numpy's MemoryError, torch's CUDA OutOfMemoryError or its CPU allocator's failure (a
    plain RuntimeError: "DefaultCPUAllocator: can't allocate memory")."""
    torch = sys.modules.get("torch")
    oom = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    return isinstance(e, MemoryError) or (oom is not None and isinstance(e, oom)) \
        or "can't allocate memory" in str(e)


class Terminated(KeyboardInterrupt):
    """SIGTERM (what `kill`, `timeout`, job schedulers and `docker stop` send), raised where
    the program is, so that it ends as after Ctrl-C: temporary files removed, the resume hint
    printed; exit status 143 (128 + 15) as for a process killed by it."""


@contextlib.contextmanager
def _sigterm_as_interrupt():
    def terminate(signum, frame):
        raise Terminated()

    try:
        previous = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, terminate)
        installed = True
    except (ValueError, AttributeError):   # not the main thread (main() called from one)
        installed = False
    try:
        yield
    finally:
        if installed:   # (None: a handler set from C, not restorable from Python: the default)
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _warning_printer(command: str):
    """warnings.showwarning for the command: one line ``fastgru4rec CMD: warning: ...`` on
    stderr, like the errors (Python's default adds the file, line and source of the call)."""
    def show(message, category, filename, lineno, file=None, line=None):
        text = one_line(message).removeprefix("fastgru4rec: ")
        print(f"fastgru4rec {command}: warning: {text}", file=file or sys.stderr)
    return show


def _silence_stdout():
    """After EPIPE: point stdout at /dev/null so the interpreter's final flush of it does not
    fail a second time ("Exception ignored ... BrokenPipeError"); the recipe of Python's
    signal-module docs."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):   # stdout without a file descriptor (e.g. captured)
        pass


#: a bound far above any machine's cores, so that a typo is a message, not an overflow
MAX_THREADS = 1 << 16


# what argparse itself takes for a positional value rather than an option (an id like -5)
_NEGATIVE_NUMBER = re.compile(r"-\d+$|-\d*\.\d+$")


#: the authors' run.py long options spelled with underscores -> this command line's (given as
#: aliases to argparse they would make abbreviations such as --save ambiguous)
AUTHORS_LONG_OPTIONS = {
    "--parameter_string": "--parameter-string", "--parameter_file": "--parameter-file",
    "--save_model": "--save-model", "--eval_type": "--eval-type",
    "--sample_store_size": "--sample-store-size", "--session_key": "--session-key",
    "--item_key": "--item-key", "--time_key": "--time-key",
}


def _authors_spellings(argv: List[str]) -> List[str]:
    out = []
    for i, a in enumerate(argv):
        if a == "--":          # the rest are values (recommend's item ids)
            return out + argv[i:]
        name, eq, value = a.partition("=")
        out.append(AUTHORS_LONG_OPTIONS.get(name, name) + eq + value
                   if name in AUTHORS_LONG_OPTIONS else a)
    return out


def main(argv: Optional[List[str]] = None) -> int:
    started = time.time()
    argv = _authors_spellings(list(sys.argv[1:] if argv is None else argv))
    try:
        # importing the subcommands takes a moment: a Ctrl-C then is an interruption too
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        # item ids after an option (`recommend MODEL -k 5 ITEM ...`, or after `--`, which ends
        # the options): argparse gave the optional ITEMS nothing at MODEL and left the ids over
        before, after = extra, []
        if "--" in extra:
            before, after = extra[:extra.index("--")], extra[extra.index("--") + 1:]
        if extra and args.command == "recommend" and not any(
                a.startswith("-") and not _NEGATIVE_NUMBER.fullmatch(a) for a in before):
            args.items = list(args.items) + before + after
        elif extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except KeyboardInterrupt:
        print("fastgru4rec: interrupted", file=sys.stderr)
        return 130
    with _sigterm_as_interrupt():
        return _run_command(args, started)


def _run_command(args, started: float) -> int:
    """The parsed command, its failures as one line on stderr and an exit status."""
    try:
        # 0: leave torch's setting (as `baselines --threads` documents); the subcommand may
        # still apply its own (baselines does, per fit)
        if getattr(args, "threads", None) is not None:
            if not 0 <= args.threads <= MAX_THREADS:
                raise ConfigError(f"--threads must be in [1, {MAX_THREADS}], or 0 for torch's "
                                  f"own setting (got {args.threads})")
            if args.threads > 0:
                import torch
                torch.set_num_threads(args.threads)
        with warnings.catch_warnings():   # restores showwarning (main may run in a caller)
            warnings.showwarning = _warning_printer(args.command)
            rc = int(args.func(args) or 0)
        if sys.stdout is not None:   # None when started with stdout closed (`>&-`)
            sys.stdout.flush()       # a closed pipe must fail here, inside the handler below
        return rc
    except BrokenPipeError:
        # The reader of our output went away (`... --json | head -1`): not an error of the
        # input. Quiet, with the status of a process killed by SIGPIPE, as other tools give.
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except (ValueError, OSError) as e:
        # DataError / ConfigError / WriteError / bad arguments: one line, no traceback
        print(f"fastgru4rec {args.command}: error: {one_line(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (MemoryError, RuntimeError) as e:
        if _is_out_of_memory(e):
            # sizes too large for this machine (parameters, --synthetic, data): one line
            print(f"fastgru4rec {args.command}: error: out of memory: "
                  f"{one_line(e) or type(e).__name__}; try smaller sizes", file=sys.stderr)
            return EXIT_BAD_INPUT
        from .train import TrainingDiverged
        print(f"fastgru4rec {args.command}: error: {one_line(e)}", file=sys.stderr)
        # a diverged loss is a consequence of the parameters or data given: bad input;
        # any other RuntimeError is this program's failure
        return EXIT_BAD_INPUT if isinstance(e, TrainingDiverged) else 1
    except KeyboardInterrupt as stop:
        # the checkpoint this run wrote, else (none yet) the one it resumed; never a file
        # that only happens to be there (from another run)
        written = getattr(args, "checkpoint", None)
        if not (written and os.path.isfile(written) and os.path.getmtime(written) >= started):
            written = None
        resumed = getattr(args, "resume", None)
        ck = written or (resumed if resumed and os.path.isfile(resumed) else None)
        hint = f" (continue from the last checkpoint with --resume {ck})" if ck else ""
        terminated = isinstance(stop, Terminated)
        print(f"fastgru4rec {args.command}: {'terminated' if terminated else 'interrupted'}"
              f"{hint}", file=sys.stderr)
        return 128 + signal.SIGTERM if terminated else 130


if __name__ == "__main__":
    sys.exit(main())
