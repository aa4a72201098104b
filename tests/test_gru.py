"""The GRU layer and the model's step against torch.nn.GRUCell and a float64 hand formula."""
import math

import numpy as np
import torch

from fastgru4rec.nn import GRU4RecModel, GRULayer
from fastgru4rec.ops.gru import gru_step_reference


def test_cell_variant_is_a_drop_in_for_nn_grucell():
    torch.manual_seed(0)
    ref = torch.nn.GRUCell(7, 5).double()
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_()
    layer = GRULayer(7, 5, variant="cell").double()
    layer.load_state_dict(ref.state_dict())
    x, h = torch.randn(4, 7, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    assert torch.allclose(layer(x, h), ref(x, h), rtol=1e-12, atol=1e-14)
    assert {n: p.shape for n, p in layer.named_parameters()} == \
        {n: p.shape for n, p in ref.named_parameters()}
    # and every gradient (input, state, each parameter by name) equals nn.GRUCell's autograd
    x.requires_grad_(), h.requires_grad_()
    w = torch.randn(4, 5, dtype=torch.float64)
    names = [n for n, _ in layer.named_parameters()]
    mine, theirs = dict(layer.named_parameters()), dict(ref.named_parameters())
    g_layer = torch.autograd.grad((layer(x, h) * w).sum(), [x, h] + [mine[n] for n in names])
    g_ref = torch.autograd.grad((ref(x, h) * w).sum(), [x, h] + [theirs[n] for n in names])
    for name, a, b in zip(["x", "h"] + names, g_layer, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14, msg=name)
    # the same parameter order: a transfer by position (a flat vector) gives the same cell
    assert [n for n, _ in layer.named_parameters()] == [n for n, _ in ref.named_parameters()]
    by_position = GRULayer(7, 5).double()
    torch.nn.utils.vector_to_parameters(torch.nn.utils.parameters_to_vector(ref.parameters()),
                                        by_position.parameters())
    assert torch.equal(by_position(x, h), ref(x, h))


def test_original_variant_matches_hand_formula():
    rng = np.random.default_rng(3)
    b, E, H = 3, 4, 2
    x, h = rng.normal(size=(b, E)), rng.normal(size=(b, H))
    Wx, Wh, bias = rng.normal(size=(3 * H, E)), rng.normal(size=(3 * H, H)), rng.normal(size=3 * H)
    layer = GRULayer(E, H, variant="original").double()
    with torch.no_grad():
        layer.weight_ih.copy_(torch.tensor(Wx))
        layer.weight_hh.copy_(torch.tensor(Wh))
        layer.bias_ih.copy_(torch.tensor(bias))
    got = layer(torch.tensor(x), torch.tensor(h)).detach().numpy()
    sig = lambda v: 1 / (1 + np.exp(-v))
    for i in range(b):
        gx = Wx @ x[i] + bias
        r = sig(gx[:H] + Wh[:H] @ h[i])
        z = sig(gx[H:2 * H] + Wh[H:2 * H] @ h[i])
        c = np.tanh(gx[2 * H:] + Wh[2 * H:] @ (r * h[i]))
        np.testing.assert_allclose(got[i], (1 - z) * h[i] + z * c, rtol=1e-12)
    assert layer.bias_hh is None


def test_glorot_init_per_gate_block_and_zero_biases():
    model = GRU4RecModel(n_items=500, layers=(64, 32), embedding_mode="separate", embedding_dim=48)
    l0 = model.gru[0]
    for block in l0.weight_ih.detach().chunk(3, dim=0):
        bound = math.sqrt(6 / (64 + 48))
        assert block.abs().max() <= bound and block.abs().max() > 0.9 * bound
    for block in model.gru[1].weight_hh.detach().chunk(3, dim=0):
        assert block.abs().max() <= math.sqrt(6 / (32 + 32))
    assert model.item_weight.abs().max() <= math.sqrt(6 / (500 + 32))
    assert torch.all(model.item_bias == 0) and torch.all(l0.bias_ih == 0) and torch.all(l0.bias_hh == 0)
    # seeded: same seed, same weights; other seed, other weights
    again = GRU4RecModel(n_items=500, layers=(64, 32), embedding_mode="separate", embedding_dim=48)
    other = GRU4RecModel(n_items=500, layers=(64, 32), embedding_mode="separate", embedding_dim=48, seed=1)
    assert torch.equal(model.item_weight, again.item_weight)
    assert not torch.equal(model.item_weight, other.item_weight)


def test_onehot_input_table_glorot_per_gate_column_block():
    # the one-hot input table (N, 3H) is the first layer's W_x: each gate's (N, H) column block
    # drawn with its own Glorot bound sqrt(6 / (N + H))
    N, H = 500, 64
    model = GRU4RecModel(n_items=N, layers=(H,), embedding_mode="onehot")
    bound = math.sqrt(6 / (N + H))
    for block in model.input_table.detach().chunk(3, dim=1):
        assert block.shape == (N, H)
        assert block.abs().max() <= bound and block.abs().max() > 0.9 * bound
    assert torch.all(model.input_bias == 0)


def test_score_of_chosen_items_takes_their_own_rows_and_biases():
    model = GRU4RecModel(n_items=40, layers=(6,), embedding_mode="shared").double()
    with torch.no_grad():
        model.item_bias.copy_(torch.randn(40, dtype=torch.float64))
    h = torch.randn(3, 6, dtype=torch.float64)
    Y = torch.tensor([31, 2, 31, 0, 17])                     # repeats, out of order
    W, b = model.item_weight.detach().numpy(), model.item_bias.detach().numpy()
    expect = h.numpy() @ W[Y.numpy()].T + b[Y.numpy()]
    np.testing.assert_allclose(model.score(h, item_idx=Y).detach().numpy(), expect, rtol=1e-12)
    np.testing.assert_allclose(model.score(h).detach().numpy(), h.numpy() @ W.T + b, rtol=1e-12)


def test_onehot_first_layer_gathers_table_rows():
    model = GRU4RecModel(n_items=30, layers=(6,), embedding_mode="onehot").double()
    items = torch.tensor([3, 7, 3])
    h0 = torch.randn(3, 6, dtype=torch.float64)
    h_last, hidden = model(items, [h0])
    gi = model.input_table[items] + model.input_bias
    expect = gru_step_reference(gi, h0, model.gru[0].weight_hh, None, "original")
    assert torch.allclose(h_last, expect) and model.gru[0].variant == "original"


def test_dropout_is_inverted_seeded_and_carried():
    model = GRU4RecModel(n_items=20, layers=(8, 8), embedding_mode="shared")
    x = torch.randn(5, 8)
    hidden = model.init_hidden(5)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    out1, hid1 = model.step(x, hidden, 0.0, 0.5, g1)
    out2, hid2 = model.step(x, hidden, 0.0, 0.5, g2)
    assert torch.equal(out1, out2)
    # the carried state of each layer is its dropped-out output: zeros appear, kept units are
    # scaled by 1/(1-p) relative to the no-dropout output
    _, clean = model.step(x, hidden)
    for l in range(2):
        dropped = hid1[l] == 0
        assert dropped.any()
    kept = hid1[0] != 0
    assert torch.allclose(hid1[0][kept], 2.0 * clean[0][kept])
    assert out1 is hid1[-1] or torch.equal(out1, hid1[-1])


def test_int_seed_becomes_one_cached_device_tensor():
    """An int seed is uploaded once per (device, value), not in every call (on CUDA each
    upload is a synchronous host-to-device copy); tensor seeds pass through."""
    from fastgru4rec.ops.gru import _seed_tensor
    a, b = _seed_tensor(7, torch.device("cpu")), _seed_tensor(7, "cpu")
    assert a is b and a.dtype == torch.int64 and a.tolist() == [7]
    assert _seed_tensor(8, "cpu").tolist() == [8]
    s = torch.tensor([5], dtype=torch.int64)
    assert _seed_tensor(s, "cpu").data_ptr() == s.data_ptr()


def test_cell_variant_takes_nn_grucell_constructor_and_call_forms():
    """GRUCell(input_size, hidden_size, bias, device, dtype); unbatched (in,) input; no bias."""
    torch.manual_seed(1)
    ref = torch.nn.GRUCell(6, 4, False, None, torch.float64)
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_()
    layer = GRULayer(6, 4, False, None, torch.float64)
    assert layer.bias_ih is None and layer.bias_hh is None
    assert layer.weight_ih.dtype == torch.float64
    layer.load_state_dict(ref.state_dict())
    x, h = torch.randn(3, 6, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    assert torch.allclose(layer(x, h), ref(x, h), rtol=1e-12, atol=1e-14)
    assert torch.allclose(layer(x), ref(x), rtol=1e-12, atol=1e-14)
    one = layer(x[1], h[1])
    assert one.shape == (4,) and torch.allclose(one, ref(x[1], h[1]), rtol=1e-12, atol=1e-14)
    assert layer(x[1]).shape == (4,)
    assert repr(layer) == "GRULayer(6, 4, bias=False)"
    assert repr(GRULayer(6, 4, variant="original")) == "GRULayer(6, 4, variant='original')"


def test_layer_rejects_bad_shapes_and_arguments_with_one_line_errors():
    import pytest
    layer = GRULayer(6, 4)
    for x, h, what in [(torch.randn(3, 5), None, "5 features"),
                       (torch.randn(2, 3, 6), None, "(2, 3, 6)"),
                       (torch.randn(3, 6), torch.randn(2, 4), "(2, 4)"),
                       (torch.randn(6), torch.randn(1, 4), "(1, 4)")]:
        with pytest.raises(ValueError, match=what.replace("(", r"\(").replace(")", r"\)")) as e:
            layer(x, h)
        assert "\n" not in str(e.value)
    with pytest.raises(TypeError, match="variant="):
        GRULayer(6, 4, "original")
    for bias in (2, 1.0, None):
        with pytest.raises(TypeError, match="bias must be True or False"):
            GRULayer(6, 4, bias)
    # 0 / 1 as nn.GRUCell takes them
    assert GRULayer(6, 4, 0).bias is False and GRULayer(6, 4, 0).bias_ih is None
    assert GRULayer(6, 4, 1).bias is True and GRULayer(6, 4, 1).bias_hh is not None
    # numpy's bool as well (nn.GRUCell takes it); a float size is not truncated
    import numpy as np
    assert GRULayer(6, 4, np.bool_(False)).bias_ih is None
    for sizes, name in (((6, 4.5), "hidden_size"), ((6.0, 4), "input_size")):
        with pytest.raises(TypeError, match=f"GRULayer: {name} must be an integer"):
            GRULayer(*sizes)
    with pytest.raises(ValueError, match="hidden_size=0"):
        GRULayer(6, 0)
    with pytest.raises(RuntimeError, match="step"):
        GRULayer(None, 4)(torch.randn(2, 12))


def test_model_rejects_bad_sizes_naming_the_argument():
    import pytest
    for args, what in (((0, (8,)), "n_items must be at least 1"),
                       ((-10, (8,)), "n_items must be at least 1"),
                       ((10, (-5,)), r"layers must be positive, got \[-5\]"),
                       ((10, (8, 0)), r"layers must be positive, got \[8, 0\]"),
                       ((10, ()), "at least one hidden size"),
                       ((10, (8,), "separate", -3), "embedding_dim must be >= 0"),
                       ((10, (8,), "separate", 0), "needs embedding_dim > 0")):
        with pytest.raises(ValueError, match=what) as e:
            GRU4RecModel(*args)
        assert "\n" not in str(e.value)
    # one layer's size as an int, as the estimator's layers=100
    assert GRU4RecModel(10, 8).layers == (8,)


def test_fused_step_reference_equals_nn_grucell_composition():
    """gru_step_fused_reference (the oracle of the Triton step) against nn.GRUCell in float64:
    input rows gathered by idx, restarting lanes from a zero state, inverted dropout with the
    documented keep masks on the input rows (which=0) and on the output (which=1)."""
    from fastgru4rec.ops.gru import dropout_keep_mask, gru_step_fused_reference
    torch.manual_seed(2)
    N, E, H, b = 9, 5, 4, 6
    cell = torch.nn.GRUCell(E, H).double()
    with torch.no_grad():
        for p in cell.parameters():
            p.normal_()
    table = torch.randn(N, E, dtype=torch.float64)
    h = torch.randn(b, H, dtype=torch.float64)
    idx = torch.tensor([3, 0, 8, 3, 5, 1])
    reset = torch.tensor([False, True, False, False, True, False])
    p_in, p_out, seed, stream = 0.3, 0.4, 1234, 2
    got = gru_step_fused_reference(table, h, cell.weight_ih, cell.bias_ih, cell.weight_hh,
                                   cell.bias_hh, "cell", idx=idx, reset=reset, dropout_in=p_in,
                                   dropout_out=p_out, seed=seed, stream=stream)
    keep_in = dropout_keep_mask(seed, b, E, p_in, stream, 0).double()
    keep_out = dropout_keep_mask(seed, b, H, p_out, stream, 1).double()
    assert 0 < keep_in.mean() < 1 and 0 < keep_out.mean() < 1
    x = table[idx] * keep_in / (1 - p_in)
    h0 = torch.where(reset[:, None], torch.zeros_like(h), h)
    want = cell(x, h0) * keep_out / (1 - p_out)
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-14)
    # without dropout and with no lane restarting: exactly nn.GRUCell on the gathered rows
    plain = gru_step_fused_reference(table, h, cell.weight_ih, cell.bias_ih, cell.weight_hh,
                                     cell.bias_hh, "cell", idx=idx)
    assert torch.allclose(plain, cell(table[idx], h), rtol=1e-12, atol=1e-14)


def test_model_exports_with_torch_export_for_serving():
    """Importing the model into one's own PyTorch code includes serving it: GRU4RecModel's
    step and scores go through torch.export (no data-dependent Python branches) and the
    exported program computes what the module does, for each embedding mode."""
    import pytest

    if not hasattr(torch, "export"):
        pytest.skip("torch.export needs torch >= 2.1")
    for mode in ("shared", "separate", "onehot"):
        torch.manual_seed(0)
        net = GRU4RecModel(40, layers=(8, 6), embedding_mode=mode,
                           embedding_dim=5 if mode == "separate" else 0)

        class Serve(torch.nn.Module):
            def __init__(self, net):
                super().__init__()
                self.net = net

            def forward(self, items, h0, h1):
                h_last, hidden = self.net(items, [h0, h1])
                return self.net.score(h_last), hidden[0], hidden[1]

        args = (torch.tensor([3, 0, 39]), torch.randn(3, 8), torch.randn(3, 6))
        program = torch.export.export(Serve(net), args)
        for got, want in zip(program.module()(*args), Serve(net)(*args)):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
