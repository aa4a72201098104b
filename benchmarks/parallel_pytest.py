"""Run test files in parallel pytest processes, one per file: gpu_check.sh's device tests.

On a GPU the first launch of each Triton kernel specialization compiles it on the CPU (about a
second each, and the device tests meet a hundred or more); one pytest process compiles them one
after another while the GPU idles. Separate processes compile on separate cores (the lent
machine has 16). The tests check values, never time, so sharing the GPU does not change them.

    python benchmarks/parallel_pytest.py --junit-dir DIR [--jobs N] [--shards K] FILE...
        [-- PYTEST_ARGS...]

--shards K splits each file's tests over K processes (the plugin benchmarks/pytest_shard.py
with FASTGRU4REC_TEST_SHARD=i/K: every K-th test). Each process's output goes to
DIR/tests-<stem>[-<i>].log and its JUnit XML to DIR/tests-<stem>[-<i>].xml; one line per
process is printed as it ends. Exit status: 0 when every file passed (pytest's 0, or 5:
nothing collected), 1 otherwise, 2 on bad usage. On SIGTERM/SIGINT (gpu_check's timeout) the
running pytest processes are terminated first.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

HERE = Path(__file__).resolve().parent   # pytest_shard.py lives here


def _last_line(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def run(files: List[str], junit_dir: Path, jobs: int, pytest_args: List[str],
        shards: int = 1) -> int:
    junit_dir.mkdir(parents=True, exist_ok=True)
    # (file, shard index or None)
    pending = [(f, i if shards > 1 else None) for f in files for i in range(shards)]
    total = len(pending)
    running: Dict[subprocess.Popen, tuple] = {}
    failed = []

    def stop(signum, frame):
        for proc in running:
            proc.terminate()
        for proc in running:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
        print(f"parallel_pytest: stopped by signal {signum}; unfinished: "
              f"{', '.join(f for f, _, _ in running.values()) or 'none'}", flush=True)
        sys.exit(124)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while pending or running:
        while pending and len(running) < jobs:
            f, shard = pending.pop(0)
            stem = Path(f).stem + (f"-{shard}" if shard is not None else "")
            label = f if shard is None else f"{f} [{shard}/{shards}]"
            log = junit_dir / f"tests-{stem}.log"
            cmd = [sys.executable, "-m", "pytest", f, "-p", "no:cacheprovider",
                   f"--junitxml={junit_dir / f'tests-{stem}.xml'}", *pytest_args]
            env = dict(os.environ)
            if shard is not None:
                env["FASTGRU4REC_TEST_SHARD"] = f"{shard}/{shards}"
                env["PYTHONPATH"] = os.pathsep.join(
                    [str(HERE)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
                cmd[3:3] = ["-p", "pytest_shard"]
            with open(log, "wb") as out:
                proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
            running[proc] = (label, log, time.perf_counter())
        time.sleep(0.2)
        for proc in [p for p in running if p.poll() is not None]:
            f, log, t0 = running.pop(proc)
            ok = proc.returncode in (0, 5)
            if not ok:
                failed.append(f)
            print(f"{'ok    ' if ok else 'FAILED'} {f} (rc {proc.returncode}, "
                  f"{time.perf_counter() - t0:.0f} s): {_last_line(log)}", flush=True)
    print(f"parallel_pytest: {total - len(failed)} of {total} processes passed"
          + (f"; failed: {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    pytest_args: List[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, pytest_args = argv[:i], argv[i + 1:]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+", help="test files (one pytest process each; a folder: "
                    "its test_*.py)")
    ap.add_argument("--junit-dir", type=Path, required=True)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--shards", type=int, default=1, help="processes per file")
    args = ap.parse_args(argv)
    files = []
    for f in args.files:   # a folder stands for its test_*.py files
        files += sorted(str(x) for x in Path(f).glob("test_*.py")) if Path(f).is_dir() else [f]
    missing = [f for f in files if not Path(f).is_file()]
    if missing or not files:
        print(f"parallel_pytest: no such test file: {', '.join(missing or args.files)}",
              file=sys.stderr)
        return 2
    if args.jobs < 1 or args.shards < 1:
        print("parallel_pytest: --jobs and --shards must be at least 1", file=sys.stderr)
        return 2
    return run(files, args.junit_dir, args.jobs, pytest_args, args.shards)


if __name__ == "__main__":
    sys.exit(main())
