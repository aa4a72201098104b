"""The kernel tests once more, in the interpreter, with the block sizes a GPU runs.

In the interpreter the launch functions pick large blocks (it pays per program, not per flop),
so one program usually covers a whole test tensor. A GPU runs small blocks: many programs, block
edges inside the data, several K chunks, the catalog split over 132 SMs. With
FASTGRU4REC_KERNEL_BLOCKS=gpu (kernels/launch.py) the interpreter runs the GPU's blocks; this
runs the kernel test files under it in a child process (the variable is read at each launch,
so a child keeps it out of this process's other tests)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import subprocess_env

ROOT = Path(__file__).resolve().parents[1]
FILES = ["test_gru_kernel.py", "test_scoring_kernel.py", "test_ranking_kernel.py",
         "test_fused_step_kernel.py", "test_optim_kernel.py", "test_full_catalog.py"]


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                    reason="on a GPU the kernel tests already run the GPU's blocks")
def test_kernel_tests_pass_with_the_gpu_blocks():
    pytest.importorskip("triton")
    env = subprocess_env(FASTGRU4REC_KERNEL_BLOCKS="gpu", TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           *[str(ROOT / "tests" / f) for f in FILES]],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    tail = "\n".join(proc.stdout.splitlines()[-30:])
    assert proc.returncode == 0, tail
    assert " passed" in tail and "failed" not in tail, tail


def test_gpu_blocks_switch_changes_the_blocks(monkeypatch):
    """The switch is real: the same launch function picks other blocks under it."""
    pytest.importorskip("triton")
    from fastgru4rec.ops.backend import load_kernels
    launch, gru = load_kernels("launch"), load_kernels("gru_step")
    monkeypatch.setenv(launch.BLOCKS_ENV, "gpu")
    gpu = gru._blocks(300, 100, 100, "cell")
    monkeypatch.delenv(launch.BLOCKS_ENV)
    here = gru._blocks(300, 100, 100, "cell")
    assert gpu == (32, 32, 16, 4)
    if launch.interpreting():
        assert here != gpu
