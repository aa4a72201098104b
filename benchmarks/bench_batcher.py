"""Native session batcher and negative sampler against their Python references (same run).

    python -m pytest benchmarks/bench_batcher.py -q [--benchmark-json out.json]

Claims checked (the claim fixture: reported, failed only with FASTGRU4REC_BENCH_ASSERT=1):
- the whole-epoch schedule of yoochoose1_64 (train.tsv, 486k events) is >= 50x the reference
  (measured in the same run) at the published batch sizes (32: RSC15, 48: Yoochoose); batch 512
  is measured too (its ratio only reported: the reference's cost falls with the number of
  steps, the native one is set by the events). events/s is reported, not asserted (the issue's
  50M events/s is an absolute number, without a baseline in the run);
- an epoch schedule costs <= 13 bytes per event;
- the sampler on 2 threads draws >= 10x as fast as the reference (numpy, binary search over the
  CDF) in the same run; draws/s is reported against the issue's 100M ids/s, not asserted;
- the chunked stream keeps up with a simulated 50 µs training step: after the first chunk the
  consumer never waits.
events/s counts the data set's events (rows of train.tsv) per second of schedule building.
"""
from __future__ import annotations

import time

import numpy as np
import pytest

from fastgru4rec import native
from fastgru4rec.batching import session_parallel_schedule
from fastgru4rec.sampling import draw_negatives, sampling_cdf

if not native.available():
    pytest.skip(f"native extension unavailable: {native.load_error()}", allow_module_level=True)

FIELDS = ("width", "step_offsets", "inputs", "targets", "reset", "keep_offsets", "keep")
_reference_best = {}   # batch -> best reference seconds, measured in this run
_sampler_reference_best = {}   # "s" -> best reference seconds for N_DRAWS, measured in this run



@pytest.fixture(scope="module")
def yoochoose(shared_file):
    from fastgru4rec.data import read_sessions
    return read_sessions(shared_file("yoochoose1_64", "train.tsv"))


def reference_best(data, batch):
    if batch not in _reference_best:
        best = float("inf")
        for _ in range(2):
            t = time.perf_counter()
            session_parallel_schedule(data.offsets, data.items, batch, 2)
            best = min(best, time.perf_counter() - t)
        _reference_best[batch] = best
    return _reference_best[batch]


@pytest.mark.parametrize("batch", [32, 48, 512])
def test_schedule_reference(benchmark, yoochoose, batch):
    benchmark.group = f"schedule-yoochoose1_64-B{batch}"   # one group per batch: ratios pair up
    benchmark.extra_info["baseline"] = "reference"
    # warmed up as the native side is: a cold first call would inflate the ratio
    benchmark.pedantic(session_parallel_schedule, args=(yoochoose.offsets, yoochoose.items, batch, 2),
                       rounds=2, iterations=1, warmup_rounds=1)
    _reference_best[batch] = benchmark.stats.stats.min


@pytest.mark.parametrize("batch", [32, 48, 512])
def test_schedule_native(benchmark, yoochoose, batch, claim):
    benchmark.group = f"schedule-yoochoose1_64-B{batch}"
    s = benchmark.pedantic(native.epoch_schedule, args=(yoochoose.offsets, yoochoose.items, batch, 2),
                           rounds=30, iterations=1, warmup_rounds=2)
    best = benchmark.stats.stats.min
    ref = reference_best(yoochoose, batch)
    events_per_s = yoochoose.n_events / best
    bytes_per_event = sum(getattr(s, f).nbytes for f in FIELDS) / s.n_events
    benchmark.extra_info.update(events=yoochoose.n_events, pairs=s.n_events, steps=s.n_steps,
                                events_per_s=events_per_s, ratio_vs_reference_best=ref / best,
                                bytes_per_event=bytes_per_event)
    print(f"\n[schedule B={batch}] native {best * 1e3:.2f} ms, reference {ref * 1e3:.1f} ms, "
          f"x{ref / best:.0f}, {events_per_s / 1e6:.0f}M events/s, {bytes_per_event:.2f} B/event")
    claim(bytes_per_event <= 13, f"B={batch}: {bytes_per_event:.2f} bytes/event > 13")
    if batch <= 48:
        claim(ref / best >= 50, f"B={batch}: only {ref / best:.1f}x the reference")


N_DRAWS = 10_000_000


@pytest.mark.benchmark(group="sampler")
def test_sampler_reference(benchmark, yoochoose):
    benchmark.extra_info["baseline"] = "reference"
    cdf = sampling_cdf(yoochoose.supports, 0.5)
    rng = np.random.default_rng(0)
    benchmark.pedantic(draw_negatives, args=(cdf, N_DRAWS, rng), rounds=2, iterations=1,
                       warmup_rounds=1)
    _sampler_reference_best["s"] = benchmark.stats.stats.min


def sampler_reference_best(data):
    if "s" not in _sampler_reference_best:   # this benchmark alone: measure the reference now
        cdf, rng, best = sampling_cdf(data.supports, 0.5), np.random.default_rng(0), float("inf")
        for _ in range(2):
            t = time.perf_counter()
            draw_negatives(cdf, N_DRAWS, rng)
            best = min(best, time.perf_counter() - t)
        _sampler_reference_best["s"] = best
    return _sampler_reference_best["s"]


@pytest.mark.benchmark(group="sampler")
def test_sampler_native_2_threads(benchmark, yoochoose, claim):
    sampler = native.AliasSampler(yoochoose.supports, 0.5, seed=0, n_threads=2)
    out = np.empty(N_DRAWS, np.int64)
    benchmark.pedantic(sampler.draw, args=(out,), rounds=10, iterations=1, warmup_rounds=1)
    best = benchmark.stats.stats.min
    draws_per_s = N_DRAWS / best
    ratio = sampler_reference_best(yoochoose) / best
    benchmark.extra_info.update(draws_per_s=draws_per_s, n_threads=2, ratio_vs_reference_best=ratio,
                                issue_target_draws_per_s=100e6)
    print(f"\n[sampler] {draws_per_s / 1e6:.0f}M draws/s on 2 threads (issue: 100M), "
          f"x{ratio:.1f} the reference")
    claim(ratio >= 10, f"sampler only {ratio:.1f}x the reference")


@pytest.mark.benchmark(group="stream")
def test_stream_keeps_up_with_50us_steps(benchmark, yoochoose, claim):
    """Consumer: a busy-wait of 50 µs per schedule step (a fast training step), batch 48."""

    def epoch():
        with native.ScheduleStream(yoochoose.offsets, yoochoose.items, 48, 2, chunk_steps=64,
                                   n_slots=4) as s:
            steps = 0
            for chunk in s:
                steps += chunk.n_steps
                end = time.perf_counter() + 50e-6 * chunk.n_steps
                while time.perf_counter() < end:
                    pass
            return s.stats(), steps

    stats, steps = benchmark.pedantic(epoch, rounds=1, iterations=1)
    benchmark.extra_info.update(steps=steps, **stats)
    print(f"\n[stream] {steps} steps in {stats['chunks']} chunks; consumer waits after the first "
          f"chunk: {stats['waits_after_first']} ({stats['wait_seconds'] * 1e6:.0f} µs); first "
          f"chunk {stats['first_wait_seconds'] * 1e6:.0f} µs")
    claim(stats["waits_after_first"] == 0, f"the consumer waited: {stats}")
