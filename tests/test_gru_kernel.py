"""The fused Triton GRU step (kernels/gru_step.py through fastgru4rec.ops.gru) against the float64
plain-torch reference: forward and every gradient (input rows or table, h, W_ih, b_ih, W_hh,
b_hh), both variants, every input mode (x·W_ih, embedding lookup fused by idx, projection rows,
one-hot table rows), lanes that restart, dropout inside the kernel (the same counter-based mask
as the reference), 1 to 3 stacked layers, bf16, and the torch.compile registration.

Runs on a GPU, or on CPU in Triton's interpreter: TRITON_INTERPRET=1 must be set before triton
is imported anywhere in the process (Triton decides per kernel when it is decorated, and its
own library functions are decorated at `import triton`), so CI sets it for the run:
    TRITON_INTERPRET=1 pytest tests/test_gru_kernel.py
Outputs and scratch buffers are poisoned with NaN before every launch; relative error (max-abs
over max-abs) is required under 1e-5 in fp32 with ieee dot precision.
"""
import pytest
import torch

from conftest import kernel_test_setup

K, DEV = kernel_test_setup("gru_step")

from fastgru4rec.ops import gru as G  # noqa: E402

TOL = 1e-5
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")   # interpreter exp overflow


@pytest.fixture(autouse=True, scope="module")
def _poison_outputs():
    """Every output and scratch buffer NaN before each launch (the default in the interpreter;
    on a GPU too here)."""
    from fastgru4rec.ops.backend import load_kernels
    launch = load_kernels("launch")
    before, launch.poison = launch.poison, True
    yield
    launch.poison = before


def rel(a, b):
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    assert torch.isfinite(a).all(), "non-finite (unwritten?) output"
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


# ----------------------------------------------------------------------------- one layer
def make_layer(g, variant, mode, b, H, E, n_table):
    """Float64 arguments of one gru_step_fused call. mode: "proj" (x rows (b, E) · W_ih),
    "lookup" (table (n, E) gathered by idx, then · W_ih), "gi" (projection rows (b, 3H)),
    "onehot" (table (n, 3H) gathered by idx + bias)."""
    r = lambda *s, sc=1.0: torch.randn(*s, generator=g, dtype=torch.float64) * sc
    H3 = 3 * H
    idx = None
    if mode in ("proj", "lookup"):
        x = r(n_table if mode == "lookup" else b, E)
        w_ih, b_ih = r(H3, E, sc=E ** -0.5), r(H3, sc=0.3)
    else:
        x = r(n_table if mode == "onehot" else b, H3)
        w_ih, b_ih = None, (r(H3, sc=0.3) if mode == "onehot" else None)
    if mode in ("lookup", "onehot"):
        idx = torch.randint(0, n_table, (b,), generator=g)
        if b > 1:
            idx[-1] = idx[0]                               # a duplicated row: gradients add up
    w_hh = r(H3, H, sc=H ** -0.5)
    b_hh = r(H3, sc=0.3) if variant == "cell" else None
    h = r(b, H)
    reset = torch.rand(b, generator=g) < 0.25
    reset[0] = True
    return dict(x=x, h=h, weight_ih=w_ih, bias_ih=b_ih, weight_hh=w_hh, bias_hh=b_hh), idx, reset


PARAMS = ("x", "h", "weight_ih", "bias_ih", "weight_hh", "bias_hh")

CASES = [  # variant, mode, b, H, E, n_table, dropout_in, dropout_out
    ("cell", "proj", 1, 16, 24, 0, 0.3, 0.2),
    ("original", "proj", 300, 100, 64, 0, 0.25, 0.5),
    ("cell", "lookup", 64, 512, 40, 30, 0.2, 0.1),
    ("original", "lookup", 17, 257, 33, 9, 0.0, 0.3),
    ("cell", "gi", 130, 33, 0, 0, 0.0, 0.0),
    ("original", "onehot", 50, 100, 0, 20, 0.0, 0.25),
    ("cell", "onehot", 9, 48, 0, 5, 0.0, 0.0),
]


@pytest.mark.parametrize("variant,mode,b,H,E,n_table,p_in,p_out", CASES,
                         ids=[f"{c[0]}-{c[1]}-b{c[2]}-H{c[3]}" for c in CASES])
def test_step_forward_and_gradients_match_float64_reference(variant, mode, b, H, E, n_table,
                                                            p_in, p_out):
    g = torch.Generator().manual_seed(b * 7919 + H)
    args, idx, reset = make_layer(g, variant, mode, b, H, E, n_table)
    kw = dict(idx=idx, reset=reset, dropout_in=p_in, dropout_out=p_out, seed=1234 + b, stream=2)
    names = [n for n in PARAMS if args[n] is not None]
    ref_args = {n: (t.clone().requires_grad_(True) if t is not None else None)
                for n, t in args.items()}
    ref = G.gru_step_fused_reference(variant=variant, **ref_args, **kw)
    g_out = torch.randn(b, H, generator=g, dtype=torch.float64)
    ref_grads = torch.autograd.grad(ref, [ref_args[n] for n in names], g_out)

    k_args = {n: (t.to(DEV, torch.float32).requires_grad_(True) if t is not None else None)
              for n, t in args.items()}
    dkw = dict(kw, idx=idx.to(DEV) if idx is not None else None, reset=reset.to(DEV))
    out = G.gru_step_fused(variant=variant, **k_args, **dkw, backend="triton", precision="ieee")
    assert out.dtype == torch.float32 and out.shape == (b, H)
    grads = torch.autograd.grad(out, [k_args[n] for n in names], g_out.to(DEV, torch.float32))

    errs = {"out": rel(out, ref)}
    errs.update({f"d{n}": rel(gk, gr) for n, gk, gr in zip(names, grads, ref_grads)})
    assert max(errs.values()) < TOL, errs
    # restarting lanes: their state gets no gradient; dropout really drops (output zeros)
    assert torch.all(grads[names.index("h")][reset.to(DEV)] == 0)
    if p_out > 0:
        frac = float((out == 0).double().mean())
        assert abs(frac - p_out) < 0.1 + 3 / (b * H) ** 0.5, frac


def test_integer_reset_and_no_input_dropout_on_projection_rows():
    """reset may be an integer tensor (nonzero: restart), on both backends; and dropout_in
    leaves projection rows (weight_ih None: one-hot table rows) alone, as documented: the same
    step as with dropout_in = 0 (its output dropout, of the same seed and stream, unchanged)."""
    g = torch.Generator().manual_seed(11)
    args, idx, reset = make_layer(g, "original", "onehot", 12, 16, 0, 7)
    as_int = reset.long() * torch.randint(1, 4, (12,), generator=g)    # 0 or 1..3
    kw = dict(idx=idx, dropout_out=0.25, seed=77, stream=1)
    ref = G.gru_step_fused_reference(variant="original", **args, reset=reset, **kw)
    assert torch.equal(G.gru_step_fused_reference(variant="original", **args, reset=as_int,
                                                  dropout_in=0.3, **kw), ref)
    k_args = {n: (t.to(DEV, torch.float32) if t is not None else None) for n, t in args.items()}
    dkw = dict(kw, idx=idx.to(DEV))
    for r, p_in in ((as_int, 0.0), (as_int, 0.3), (reset, 0.3)):
        out = G.gru_step_fused(variant="original", **k_args, reset=r.to(DEV), dropout_in=p_in,
                               **dkw, backend="triton", precision="ieee")
        assert rel(out, ref) < TOL, (r.dtype, p_in)


def test_gru_step_keeps_its_signature_and_dispatches():
    g = torch.Generator().manual_seed(3)
    b, H = 5, 20
    gi = torch.randn(b, 3 * H, generator=g, dtype=torch.float64)
    h = torch.randn(b, H, generator=g, dtype=torch.float64)
    w = torch.randn(3 * H, H, generator=g, dtype=torch.float64) * 0.3
    bias = torch.randn(3 * H, generator=g, dtype=torch.float64)
    for variant, bb in (("cell", bias), ("original", None)):
        ref = G.gru_step_reference(gi, h, w, bb, variant)
        assert torch.equal(G.gru_step(gi, h, w, bb, variant, backend="torch"), ref)
        f = lambda t: t.to(DEV, torch.float32) if t is not None else None
        got = G.gru_step(f(gi), f(h), f(w), f(bb), variant, backend="triton")
        assert rel(got, ref) < TOL
        auto = G.gru_step(f(gi), f(h), f(w), f(bb), variant)           # auto: by device
        assert rel(auto, ref) < TOL
    with pytest.raises(ValueError, match="backend"):
        G.gru_step(gi, h, w, bias, "cell", backend="cuda")
    with pytest.raises(ValueError, match="bias_hh"):
        G.gru_step_fused(gi, h, None, None, w, bias, "original", backend="triton")
    assert G._resolve_backend("auto", torch.zeros(1)) == "torch"


def test_dropout_mask_is_seeded_per_stream_and_has_rate_p():
    m = G.dropout_keep_mask(5, 200, 300, 0.3, stream=0, which=1)
    assert abs(float(m.double().mean()) - 0.7) < 0.01
    assert torch.equal(m, G.dropout_keep_mask(torch.tensor([5]), 200, 300, 0.3, 0, 1))
    assert not torch.equal(m, G.dropout_keep_mask(6, 200, 300, 0.3, 0, 1))
    assert not torch.equal(m, G.dropout_keep_mask(5, 200, 300, 0.3, 1, 1))
    assert not torch.equal(m, G.dropout_keep_mask(5, 200, 300, 0.3, 0, 0))
    assert G.dropout_keep_mask(5, 3, 4, 0.0).all()


# ----------------------------------------------------------------------------- stacked layers
def stack_step(table, idx, hidden, layers, mode, reset, p_embed, p_hidden, seed, backend):
    """One step of a GRU4Rec stack built from gru_step_fused (as GRU4RecModel.step would)."""
    outs, x = [], table
    for l, (w_ih, b_ih, w_hh, b_hh, variant) in enumerate(layers):
        first = l == 0
        out = G.gru_step_fused(x, hidden[l], w_ih, b_ih, w_hh, b_hh, variant,
                               idx=idx if first else None, reset=reset,
                               dropout_in=p_embed if (first and mode != "onehot") else 0.0,
                               dropout_out=p_hidden, seed=seed, stream=l, backend=backend,
                               precision="ieee")
        outs.append(out)
        x = out
    return outs


@pytest.mark.parametrize("mode,sizes,b", [("shared", (40,), 23), ("separate", (64, 33), 40),
                                          ("onehot", (100, 48, 20), 37)])
def test_stacked_layers_match_float64_reference(mode, sizes, b):
    g = torch.Generator().manual_seed(len(sizes))
    r = lambda *s, sc=1.0: torch.randn(*s, generator=g, dtype=torch.float64) * sc
    N = 15
    E = {"shared": sizes[-1], "separate": 24, "onehot": 3 * sizes[0]}[mode]
    table = r(N, E, sc=0.5)
    tensors, layers_meta = [table], []
    in_size = None if mode == "onehot" else E
    for l, H in enumerate(sizes):
        variant = "original" if (mode == "onehot" and l == 0) else ("cell" if l % 2 == 0 else "original")
        w_ih = r(3 * H, in_size, sc=in_size ** -0.5) if in_size else None
        b_ih = r(3 * H, sc=0.2)
        w_hh = r(3 * H, H, sc=H ** -0.5)
        b_hh = r(3 * H, sc=0.2) if variant == "cell" else None
        layers_meta.append((w_ih, b_ih, w_hh, b_hh, variant))
        tensors += [t for t in (w_ih, b_ih, w_hh, b_hh) if t is not None]
        in_size = H
    hidden = [r(b, H) for H in sizes]
    tensors += hidden
    idx = torch.randint(0, N, (b,), generator=g)
    reset = torch.rand(b, generator=g) < 0.3
    g_outs = [r(b, H) for H in sizes]

    def run(dtype, device, backend):
        leaves = [t.to(device, dtype).requires_grad_(True) for t in tensors]
        it = iter(leaves)
        tab = next(it)
        layers = []
        for w_ih, b_ih, w_hh, b_hh, variant in layers_meta:
            layers.append(tuple(next(it) if t is not None else None
                                for t in (w_ih, b_ih, w_hh, b_hh)) + (variant,))
        hid = [next(it) for _ in sizes]
        outs = stack_step(tab, idx.to(device), hid, layers, mode, reset.to(device), 0.2, 0.3,
                          torch.tensor([99], device=device), backend)
        loss = sum((o * go.to(device, dtype)).sum() for o, go in zip(outs, g_outs))
        return outs, torch.autograd.grad(loss, leaves)

    ref_outs, ref_grads = run(torch.float64, "cpu", "torch")
    outs, grads = run(torch.float32, DEV, "triton")
    errs = [rel(o, ro) for o, ro in zip(outs, ref_outs)] + [rel(a, e) for a, e in zip(grads, ref_grads)]
    assert max(errs) < TOL, errs


# ----------------------------------------------------------------------------- bf16, compile
def test_bf16_weights_and_activations_accumulate_in_fp32():
    g = torch.Generator().manual_seed(11)
    args, idx, reset = make_layer(g, "cell", "lookup", 24, 40, 32, 12)
    bf = {n: (t.to(torch.bfloat16) if t is not None else None) for n, t in args.items()}
    ref = G.gru_step_fused_reference(variant="cell", **{n: (t.double() if t is not None else None)
                                                        for n, t in bf.items()},
                                     idx=idx, reset=reset, dropout_out=0.2, seed=3)
    k_args = {n: (t.to(DEV).requires_grad_(True) if t is not None else None) for n, t in bf.items()}
    out = G.gru_step_fused(variant="cell", **k_args, idx=idx.to(DEV), reset=reset.to(DEV),
                           dropout_out=0.2, seed=3, backend="triton")
    assert out.dtype == torch.bfloat16
    assert rel(out, ref) < 1e-2                                          # bf16 output rounding
    out.float().sum().backward()
    assert k_args["weight_hh"].grad.dtype == torch.bfloat16
    assert torch.isfinite(k_args["weight_hh"].grad.float()).all()


@pytest.mark.parametrize("variant", ["cell", "original"])
def test_bf16_hidden_gradient_is_rounded_once(variant):
    # dh in bf16 against float64 on the same bf16 inputs: both variants sum dh in fp32 and round
    # it once (the original variant's three phases had rounded the partial sums through a bf16
    # buffer: median relative error 0.0070 against the cell variant's 0.0037)
    g = torch.Generator().manual_seed(0)
    b, H = 16, 64
    layer = {n: t.to(torch.bfloat16) for n, t in (
        ("weight_ih", torch.randn(3 * H, H, generator=g) / 8),
        ("weight_hh", torch.randn(3 * H, H, generator=g) / 8),
        ("bias_ih", torch.randn(3 * H, generator=g) / 8),
        ("bias_hh", torch.randn(3 * H, generator=g) / 8))}
    if variant == "original":
        layer["bias_hh"] = None
    x, h, dout = (torch.randn(b, H, generator=g).to(torch.bfloat16) for _ in range(3))

    def dh(dtype, device, backend):
        hh = h.to(device, dtype).requires_grad_(True)
        out = G.gru_step_fused(x.to(device, dtype), hh, variant=variant, backend=backend,
                               **{n: (t.to(device, dtype) if t is not None else None)
                                  for n, t in layer.items()})
        out.backward(dout.to(device, dtype))
        return hh.grad.double().cpu()

    ref, got = dh(torch.float64, "cpu", "torch"), dh(torch.bfloat16, DEV, "triton")
    err = ((got - ref).abs() / ref.abs().clamp_min(1e-3)).median().item()
    assert err < 0.005, err    # half a bf16 ulp is 0.00195; one rounding gives about 0.0035


def _tiny_args():
    g = torch.Generator().manual_seed(5)
    args, idx, reset = make_layer(g, "cell", "lookup", 3, 16, 16, 4)
    a = {n: (t.to(DEV, torch.float32).requires_grad_(True) if t is not None else None)
         for n, t in args.items()}
    return a, idx.to(DEV), reset.to(DEV)


@pytest.mark.parametrize("name", ["idx", "bias_ih", "bias_hh", "reset"])
def test_strided_small_inputs_read_correctly(name):
    # the same values as a stride-2 view: the kernels index these by lane / gate column, so
    # a view must be copied, not read as if contiguous (outputs and gradients were off by ~3)
    a, idx, reset = _tiny_args()
    args = dict(a, idx=idx, reset=reset)
    want = G.gru_step_fused(**args, variant="cell", backend="triton", precision="ieee")
    want_g = torch.autograd.grad(want.sum(), [a[n] for n in PARAMS])
    v = args[name].detach() if name.startswith("bias") else args[name]
    fill = (v == 0) if v.dtype == torch.bool else v * 0 + 5
    view = torch.stack([v, fill], 1)[:, 0]
    assert view.stride(0) == 2
    if name.startswith("bias"):
        view.requires_grad_(True)
    args[name] = view
    got = G.gru_step_fused(**args, variant="cell", backend="triton", precision="ieee")
    got_g = torch.autograd.grad(got.sum(), [args[n] for n in PARAMS])
    assert torch.equal(got, want)
    for x, y in zip(got_g, want_g):
        assert torch.equal(x, y)


def test_mismatched_sizes_are_errors_not_reads_past_the_end():
    a, idx, reset = _tiny_args()
    H = a["h"].shape[1]
    # (argument, bad value, the start of the message that names it)
    bad = [("x", a["x"][:, :-1], "x must have shape"),
           ("h", torch.cat([a["h"], a["h"][:, :1]], 1), r"weight_hh must have shape .* for h of"),
           ("idx", idx[:-1], "idx must be an int32 or int64 vector of"),
           ("idx", idx.float(), "idx must be an int32 or int64 vector of"),
           ("idx", idx.to(torch.uint8), "idx must be an int32 or int64 vector of"),
           ("reset", reset[:-1], r"reset must be a \(3,\) bool or integer tensor"),
           ("bias_ih", a["bias_ih"][:-5], "bias_ih must have shape"),
           ("weight_hh", a["weight_hh"][:, :H - 1], "weight_hh must have shape")]
    for name, t, message in bad:
        args = dict(a, idx=idx, reset=reset)
        args[name] = t
        with pytest.raises(ValueError, match=message):
            G.gru_step_fused(**args, variant="cell", backend="triton")
    with pytest.raises(ValueError, match="x must have shape"):   # no idx: one row per lane
        G.gru_step_fused(**dict(a, x=a["x"][:2], idx=None, reset=reset), variant="cell",
                         backend="triton")


def test_custom_op_registration_passes_opcheck():
    a, idx, reset = _tiny_args()
    seed = torch.tensor([7], device=DEV)
    op_args = (a["x"], a["h"], a["weight_ih"], a["bias_ih"], a["weight_hh"], a["bias_hh"], idx,
               reset, seed, "cell", 0.1, 0.2, 0, "ieee")
    torch.library.opcheck(torch.ops.fastgru4rec.gru_step_fwd.default, op_args,
                          test_utils=("test_schema", "test_autograd_registration",
                                      "test_faketensor"))


@pytest.mark.parametrize("variant", ["cell", "original"])
def test_eager_route_equals_the_custom_op_bit_for_bit(variant):
    # an eager gru_step_fused runs the kernels through _GRUStepFunction (no custom-op dispatch);
    # torch.compile traces the custom op: the same forward and gradients, bit for bit, with
    # the embedding lookup, resets and both dropouts
    g = torch.Generator().manual_seed(9)
    args, idx, reset = make_layer(g, variant, "lookup", 5, 24, 20, 6)
    leaves = {n: (t.to(DEV, torch.float32).requires_grad_(True) if t is not None else None)
              for n, t in args.items()}
    seed = torch.tensor([3], device=DEV)
    dout = torch.randn(5, 24, generator=g).to(DEV)          # (b, H)
    kw = dict(idx=idx.to(DEV), reset=reset.to(DEV), dropout_in=0.2, dropout_out=0.3, seed=seed,
              stream=1)
    eager = G.gru_step_fused(**leaves, variant=variant, backend="triton", precision="ieee",
                             **kw)
    op, _ = torch.ops.fastgru4rec.gru_step_fwd(
        *(leaves[n] for n in PARAMS), kw["idx"], kw["reset"], seed, variant, 0.2, 0.3, 1,
        "ieee")
    assert torch.equal(eager, op)
    wrt = [leaves[n] for n in PARAMS if leaves[n] is not None]
    for a, b in zip(torch.autograd.grad(eager, wrt, dout), torch.autograd.grad(op, wrt, dout)):
        assert torch.equal(a, b)


def test_eager_route_refuses_a_second_derivative():
    # the kernels give first derivatives only: differentiating the gradient again is an error
    # (as through the custom op), never a silently dropped second-order term
    # (create_graph=True: a gradient penalty would otherwise lose its dependence on the inputs
    # without a word); a plain backward still works
    a, idx, reset = _tiny_args()
    out = G.gru_step_fused(**a, variant="cell", idx=idx, reset=reset, backend="triton")
    with pytest.raises(RuntimeError, match="no second derivative: use backend='torch'"):
        torch.autograd.grad((out * out).sum(), [a["h"]], create_graph=True)
    out = G.gru_step_fused(**a, variant="cell", idx=idx, reset=reset, backend="triton")
    (dh,) = torch.autograd.grad((out * out).sum(), [a["h"]])
    assert dh.shape == a["h"].shape and not dh.requires_grad


def test_torch_compile_has_no_graph_break():
    a, idx, reset = _tiny_args()

    def f(x, h, w_ih, b_ih, w_hh, b_hh):
        out = G.gru_step_fused(x, h, w_ih, b_ih, w_hh, b_hh, "cell", idx=idx, reset=reset,
                               dropout_out=0.2, seed=torch.tensor([1], device=DEV),
                               backend="triton")
        return (out * out).sum()

    leaves = [a[n] for n in PARAMS]
    explained = torch._dynamo.explain(f)(*leaves)
    assert explained.graph_break_count == 0 and explained.graph_count == 1, (
        explained.graph_break_count, explained.graph_count, explained.break_reasons)
    torch._dynamo.reset()
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    got = torch.autograd.grad(compiled(*leaves), leaves)
    want = torch.autograd.grad(f(*leaves), leaves)
    for x, y in zip(got, want):
        assert torch.allclose(x, y, rtol=1e-5, atol=1e-6)
