"""A pytest plugin for benchmarks/parallel_pytest.py --shards: with FASTGRU4REC_TEST_SHARD=i/n
a run keeps the collected tests k with k % n == i (one file's tests over n processes)."""
from __future__ import annotations

import os

import pytest

SHARD_ENV = "FASTGRU4REC_TEST_SHARD"


def pytest_collection_modifyitems(config, items):
    spec = os.environ.get(SHARD_ENV)
    if not spec:
        return
    try:
        i, n = (int(x) for x in spec.split("/"))
        if not 0 <= i < n:
            raise ValueError
    except ValueError:
        raise pytest.UsageError(f"{SHARD_ENV} must be i/n with 0 <= i < n (got {spec!r})")
    drop = [item for k, item in enumerate(items) if k % n != i]
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = [item for k, item in enumerate(items) if k % n == i]
