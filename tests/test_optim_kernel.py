"""The Triton sparse Adagrad-momentum row update (kernels/optim.py through
fastgru4rec.ops.optim.adagrad_momentum_scatter) against the unique-row float64 reference: summed
duplicate ids, momentum on and off, (N, H) and (N,) tables, untouched rows left bit-identical.

Runs on a GPU, or on CPU in Triton's interpreter (TRITON_INTERPRET=1 set at process start; the
test suite's conftest sets it when there is no CUDA).
"""
import pytest
import torch

from conftest import kernel_test_setup

K, DEV = kernel_test_setup("optim")

from test_engine import SCATTER_CASES, check_scatter_update  # noqa: E402


@pytest.mark.parametrize("momentum", [0.0, 0.4])
@pytest.mark.parametrize("L,N,H", SCATTER_CASES + [(300, 1000, 512), (7, 3, 33)])
def test_triton_scatter_update_equals_unique_rows(momentum, L, N, H):
    check_scatter_update("triton", momentum, L, N, H, device=DEV, dtype=torch.float32, tol=2e-6)


def test_triton_scatter_update_rejects_strided_rows():
    t = torch.randn(8, 6, device=DEV)[:, ::2]
    with pytest.raises(ValueError, match="contiguous"):
        K.adagrad_momentum_sorted_rows(t, torch.arange(2, device=DEV), torch.arange(2, device=DEV),
                                       torch.randn(2, 3, device=DEV), torch.zeros_like(t), None,
                                       0.1, 0.0, 1e-6)
