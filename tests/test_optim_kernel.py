"""The Triton sparse Adagrad-momentum row update (kernels/optim.py through
fastgru4rec.ops.optim.adagrad_momentum_scatter) against the unique-row float64 reference: summed
duplicate ids, momentum on and off, (N, H) and (N,) tables, untouched rows left bit-identical;
the bias rows in the same launch; the dense update of a list of tensors (four per launch).

Runs on a GPU, or on CPU in Triton's interpreter (TRITON_INTERPRET=1 set at process start; the
test suite's conftest sets it when there is no CUDA).
"""
import pytest
import torch

from conftest import kernel_test_setup

K, DEV = kernel_test_setup("optim")

from test_engine import (SCATTER_BIAS_CASES, SCATTER_CASES, SMALL_SCATTER_CASES,  # noqa: E402
                         check_dense_list, check_scatter_update, check_scatter_with_bias)

# The references (test_engine._unique_reference / adagrad_reference) are REFERENCE §4 written
# out in float64 numpy, not library code. The "unit" cases have acc + g² ~ 1, where epsilon
# placement moves the result by ~1e-6 relative, no more than the float32 tolerance 2e-6; the
# "small" cases (acc ~ 1e-7, g ~ 1e-4, scales in test_engine.SCALES) make epsilon dominate the
# denominator, so lr·g / (sqrt(acc) + eps) in place of lr·g / sqrt(acc + eps) is ~10% off.


@pytest.mark.parametrize("momentum", [0.0, 0.4])
@pytest.mark.parametrize("L,N,H", SCATTER_CASES + [(300, 1000, 512), (7, 3, 33)])
def test_triton_scatter_update_equals_unique_rows(momentum, L, N, H):
    check_scatter_update("triton", momentum, L, N, H, device=DEV, dtype=torch.float32, tol=2e-6)


@pytest.mark.parametrize("momentum", [0.0, 0.4])
@pytest.mark.parametrize("L,N,H", SMALL_SCATTER_CASES)
def test_triton_scatter_update_epsilon_dominated(momentum, L, N, H):
    check_scatter_update("triton", momentum, L, N, H, device=DEV, dtype=torch.float32, tol=2e-6,
                         scale="small")


def test_triton_scatter_update_rejects_strided_rows():
    t = torch.randn(8, 6, device=DEV)[:, ::2]
    with pytest.raises(ValueError, match="contiguous"):
        K.adagrad_momentum_sorted_rows(t, torch.arange(2, device=DEV), torch.arange(2, device=DEV),
                                       torch.randn(2, 3, device=DEV), torch.zeros_like(t), None,
                                       0.1, 0.0, 1e-6)


def test_triton_scatter_update_rejects_mismatched_widths():
    # the kernel writes the gradient's width at each id's row: a wider gradient or state of
    # another shape would be written past the table (heap corruption), so both are errors
    t, ids = torch.zeros(8, 5, device=DEV), torch.arange(2, device=DEV)
    with pytest.raises(ValueError, match="6 columns, the table 5"):
        K.adagrad_momentum_sorted_rows(t, ids, ids, torch.randn(2, 6, device=DEV),
                                       torch.zeros_like(t), None, 0.1, 0.0, 1e-6)
    with pytest.raises(ValueError, match="acc has shape"):
        K.adagrad_momentum_sorted_rows(t, ids, ids, torch.randn(2, 5, device=DEV),
                                       torch.zeros(4, 5, device=DEV), None, 0.1, 0.0, 1e-6)
    with pytest.raises(ValueError, match="perm must be an int32 or int64 vector of 2 ids"):
        K.adagrad_momentum_sorted_rows(t, ids, ids[:1], torch.randn(2, 5, device=DEV),
                                       torch.zeros_like(t), None, 0.1, 0.0, 1e-6)
    # float ids would be truncated to rows silently: refused, the table untouched
    with pytest.raises(ValueError, match="sorted_ids must be an int32 or int64 vector of 2 ids"):
        K.adagrad_momentum_sorted_rows(t, ids.float() + 0.5, ids, torch.randn(2, 5, device=DEV),
                                       torch.zeros_like(t), None, 0.1, 0.0, 1e-6)
    assert not t.any()


@pytest.mark.parametrize("momentum", [0.0, 0.4])
@pytest.mark.parametrize("L,N,H,offset", SCATTER_BIAS_CASES)
def test_triton_scatter_update_with_bias_equals_separate_updates(momentum, L, N, H, offset):
    check_scatter_with_bias("triton", momentum, L, N, H, offset, device=DEV, dtype=torch.float32,
                            tol=2e-6)


@pytest.mark.parametrize("momentum", [0.0, 0.4])
def test_triton_scatter_update_with_bias_epsilon_dominated(momentum):
    check_scatter_with_bias("triton", momentum, 40, 30, 16, 12, device=DEV, dtype=torch.float32,
                            tol=2e-6, scale="small")


@pytest.mark.parametrize("momentum", [0.0, 0.3])
@pytest.mark.parametrize("shapes", [[(7,)], [(300, 100), (300,), (300, 100), (300,)],
                                    [(1500, 2), (0,), (5, 3), (1025,), (2, 2), (4096,)]])
def test_triton_list_update_equals_dense(momentum, shapes):
    """One launch for up to four tensors (a GRU layer), the rest in the next; tensors of
    several blocks, ending inside a block, and empty."""
    check_dense_list("triton", shapes, momentum, device=DEV, dtype=torch.float32, tol=2e-6)


@pytest.mark.parametrize("momentum", [0.0, 0.3])
def test_triton_list_update_epsilon_dominated(momentum):
    check_dense_list("triton", [(7,), (300, 5), (1025,)], momentum, device=DEV,
                     dtype=torch.float32, tol=2e-6, scale="small")


def test_triton_list_update_rejects_mismatched_state():
    p = torch.randn(4, 3, device=DEV)
    with pytest.raises(ValueError, match="acc 0 must be contiguous"):
        K.adagrad_momentum_dense_list([p], [torch.randn(4, 3, device=DEV)],
                                      [torch.zeros(3, 4, device=DEV).t()], None, 0.1, 0.0, 1e-6)
