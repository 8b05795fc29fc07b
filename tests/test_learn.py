"""The quantizer's steps, each on real weights and activations of the default model."""
import numpy as np
import pytest
import torch

from jlcm_gguf import assets, calibrate, codebook, grouping, learn, pack


@pytest.fixture(scope="module")
def layer_data():
    """Layer 2 of the default model with H from 4 x 128 calibration tokens (inputs through layers 0-1)."""
    from transformers import AutoTokenizer
    hf = assets.hf_model_dir()
    tok = AutoTokenizer.from_pretrained(hf)
    text = assets.text_file("emma").read_text(encoding="utf-8")
    stream = calibrate.LayerStream(hf)
    tokens = calibrate.calibration_tokens(tok, text, 4, 128, seed=0)
    hidden = stream.embed(tokens)
    for i in range(2):
        hidden = stream.run(stream.layer(i), hidden)
    layer = stream.layer(2)
    return layer, calibrate.collect_hessians(stream, layer, hidden)


def _file_rss_bytes() -> int:
    """Pages of mapped files in this process's RSS (Linux)."""
    import re
    from pathlib import Path
    return int(re.search(r"RssFile:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024


def test_streamed_layers_equal_the_full_model():
    """... and streaming them does not leave the checkpoint's pages in the process (0.54 GB of weights here:
    with the file held open they stayed mapped, 0.4 GB more RSS by the last layer)."""
    from transformers import AutoModelForCausalLM
    hf = assets.hf_model_dir()
    stream = calibrate.LayerStream(hf)
    tokens = torch.arange(100, 164).view(1, 64)
    h = stream.embed(tokens)
    h = stream.run(stream.layer(0), h)
    before = _file_rss_bytes()
    for i in range(1, stream.n_layers):
        h = stream.run(stream.layer(i), h)
    assert _file_rss_bytes() - before < 100e6
    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32)
    with torch.no_grad():
        ref = model.model(tokens).last_hidden_state
    assert torch.allclose(model.model.norm(h), ref, atol=1e-4)


def test_hessians_are_shared_by_inputs(layer_data):
    _, H = layer_data
    assert H["self_attn.q_proj"] is H["self_attn.k_proj"] is H["self_attn.v_proj"]
    assert H["mlp.gate_proj"] is H["mlp.up_proj"]
    assert H["mlp.down_proj"].shape == (1536, 1536) and H["self_attn.o_proj"].shape == (576, 576)
    ev = torch.linalg.eigvalsh(H["mlp.down_proj"].double())
    assert ev.min() > -1e-6 * ev.max()   # X^T X is positive semi-definite


def test_token_weights_give_each_linear_its_weighted_moment():
    stream = calibrate.LayerStream(assets.hf_model_dir())
    hidden = stream.embed(torch.arange(200, 328).view(2, 64))
    layer = stream.layer(0)
    xs, _ = calibrate.capture_inputs(stream, layer, hidden, calibrate.SHARED_INPUTS)
    plain = calibrate.collect_hessians(stream, layer, hidden)
    g = torch.Generator().manual_seed(0)
    weights = {lin: torch.rand(128, generator=g) * 3 for lin in calibrate.LINEARS}
    ones = calibrate.collect_hessians(stream, layer, hidden, weights={lin: torch.ones(128) for lin in calibrate.LINEARS})
    H = calibrate.collect_hessians(stream, layer, hidden, weights=weights)
    for src, lins in calibrate.SHARED_INPUTS.items():
        x = xs[src].double()
        for lin in lins:
            assert torch.allclose(ones[lin], plain[lin], rtol=1e-5, atol=1e-7)
            ref = (x.T * weights[lin].double()) @ x / x.shape[0]
            assert torch.allclose(H[lin].double(), ref, rtol=1e-4, atol=1e-6 * ref.abs().max().item())
    assert not torch.allclose(H["self_attn.q_proj"], H["self_attn.k_proj"])     # q and k: their own weights


def test_output_energy_is_each_linear_outputs_squared_gradient():
    """Checked against autograd's gradient of one linear's output, kept by retain_grad, on two sequences:
    sequence-major order, zero where no scored prediction can see the output (the last position)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    hf = assets.hf_model_dir()
    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(hf)
    tokens = calibrate.calibration_tokens(tok, assets.text_file("emma").read_text(encoding="utf-8"), 2, 32, seed=0)
    energy = calibrate.output_energy(model, tokens, 16)
    assert len(energy) == 30 * 7 and all(e.shape == (64,) for e in energy.values())
    lin = model.model.layers[3].mlp.up_proj
    kept = []

    def keep(_m, _a, y):
        y.retain_grad()
        kept.append(y)

    hook = lin.register_forward_hook(keep)
    for seq in tokens.split(1):
        x = model.model.embed_tokens(seq).requires_grad_(True)
        logits = model(inputs_embeds=x).logits[0, 15:-1]
        torch.nn.functional.cross_entropy(logits, seq[0, 16:], reduction="sum").backward()
    hook.remove()
    ref = torch.cat([y.grad.pow(2).sum(-1).flatten() for y in kept])
    assert torch.allclose(energy[(3, "mlp.up_proj")], ref, rtol=1e-4, atol=1e-12)
    assert energy[(3, "mlp.up_proj")][[31, 63]].abs().max() == 0 and ref[:31].min() > 0
    w = calibrate.token_weights(energy, 0.5)[(3, "mlp.up_proj")]
    assert torch.isclose(w.mean(), torch.tensor(1.0)) and w.min() >= 0.5


def test_guided_model_loop_changes_the_codes_and_stays_deterministic():
    from jlcm_gguf.distill import DistillSettings
    from jlcm_gguf.quantize import Plan, quantize_model
    hf = assets.hf_model_dir()
    text = assets.text_file("emma").read_text(encoding="utf-8")
    kw = dict(n_seqs=2, seq_len=128, quiet=True, n_layers=1)
    key = "model.layers.0.mlp.down_proj.weight"

    def run(guide):
        plan = Plan(lambda i, name: pack.JLCM2, learn.Settings(outer_steps=1, adam_steps=2, sweeps=0, guide=guide),
                    DistillSettings(epochs=0))
        return quantize_model(hf, text, plan, **kw).linears[key].blocks

    guided = run(0.5)
    assert np.array_equal(guided, run(0.5))
    assert not np.array_equal(guided, run(0.0))


def test_calibration_refuses_short_text():
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(assets.hf_model_dir())
    with pytest.raises(ValueError, match="fewer than 4 windows of 128"):
        calibrate.calibration_tokens(tok, "Too short.", 4, 128, 0)


def test_more_windows_keep_the_calibration_windows():
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(assets.hf_model_dir())
    text = assets.text_file("emma").read_text(encoding="utf-8")
    windows, first = calibrate.calibration_windows(tok, text, 3, 128, 0, n_more=5)
    assert windows.shape == (8, 128) and first.shape == (3,)
    assert torch.equal(windows[first], calibrate.calibration_tokens(tok, text, 3, 128, 0))
    assert torch.equal(windows, calibrate.calibration_tokens(tok, text, 8, 128, 0))
    ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids[0]
    starts = [next(p for p in range(0, ids.numel(), 128) if torch.equal(ids[p:p + 128], w)) for w in windows]
    assert starts == sorted(set(starts))        # disjoint windows, in text order


def test_distillation_on_more_windows_has_the_float_model_as_teacher(monkeypatch):
    """--distill-seqs: the layer-wise codes are those of the calibration windows alone; the distillation
    sees every window, each with the float model's own final hidden states."""
    from transformers import AutoModelForCausalLM
    from jlcm_gguf import quantize
    from jlcm_gguf.distill import DistillSettings
    hf = assets.hf_model_dir()
    text = assets.text_file("emma").read_text(encoding="utf-8")
    fast = learn.Settings(outer_steps=1, adam_steps=2, sweeps=0)
    seen = []
    real = quantize.distill
    monkeypatch.setattr(quantize, "distill", lambda model, q, tokens, teacher, *a: (
        seen.append((tokens, teacher)), real(model, q, tokens, teacher, *a))[1])
    kw = dict(n_seqs=2, seq_len=64, quiet=True, n_layers=1)
    plain = quantize.quantize_model(hf, text, quantize.Plan(lambda i, n: pack.JLCM2, fast, DistillSettings(seqs=0)), **kw)
    more = quantize.quantize_model(hf, text, quantize.Plan(lambda i, n: pack.JLCM2, fast, DistillSettings(seqs=5)), **kw)
    (t2, _), (t5, teacher) = seen
    assert t2.shape == (2, 64) and t5.shape == (5, 64)
    assert all(any(torch.equal(a, b) for b in t5) for a in t2)
    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32)
    caught = []
    hook = model.model.norm.register_forward_hook(lambda mod, args, out: caught.append(args[0]))
    with torch.no_grad():
        model.model(t5)
    hook.remove()
    # the float model's own output, not the quantized model's (which is off by percents); the two float paths
    # (layer loop, whole model) round differently by CPU, so the check is relative to the tensor's norm
    rel = ((teacher - caught[0]).norm() / caught[0].norm()).item()
    assert rel < 1e-4, rel
    for name, a in more.linears.items():
        da, cba, ia = pack.unpack(a.qtype, a.blocks)
        db, cbb, ib = pack.unpack(a.qtype, plain.linears[name].blocks)
        assert np.array_equal(cba, cbb) and np.array_equal(ia, ib)      # the layer-wise stage saw the same windows
    assert any(not np.array_equal(pack.unpack(a.qtype, a.blocks)[0], pack.unpack(a.qtype, plain.linears[n].blocks)[0])
               for n, a in more.linears.items())


def test_weighted_kmeans_finds_lloyd_max_levels():
    x = torch.randn(200_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    c = codebook.weighted_kmeans_1d(x, torch.ones_like(x), 4, iters=100)
    assert torch.allclose(c, torch.tensor([-1.510, -0.4528, 0.4528, 1.510], dtype=torch.float64), atol=0.02)
    # importance pulls centroids toward the samples that matter
    w = (x > 0).double() * 9 + 1
    assert codebook.weighted_kmeans_1d(x, w, 2)[1] > -codebook.weighted_kmeans_1d(x, w, 2)[0]


def test_row_batched_kmeans_equals_one_row_at_a_time(layer_data):
    """--groups 0 initializes every (row, block) codebook in one batched call; it must give exactly the
    centroids of weighted_kmeans_1d run per block (real weights of ffn_down, scaled as init scales them,
    and a 4-bit grid with ties)."""
    layer, H = layer_data
    w = layer.mlp.down_proj.weight.data[:40]
    imp = torch.diagonal(H["mlp.down_proj"]).clamp_min(1e-12).expand_as(w).reshape(-1, pack.QK)
    x = w.reshape(-1, pack.QK)
    x = x / x.pow(2).mean(1, keepdim=True).sqrt()
    grid = (x * 2).round() / 2
    for data, k in ((x, 4), (x, 8), (grid, 4)):
        rows = codebook.weighted_kmeans_1d_rows(data, imp, k)
        one = torch.stack([codebook.weighted_kmeans_1d(data[i], imp[i], k) for i in range(data.shape[0])])
        assert torch.equal(rows, one)


def test_group_codebooks_at_once_equal_one_group_at_a_time(layer_data):
    """JLCM.group_kmeans runs every (group, block column) k-means in one batched call, groups padded with
    weightless samples; against weighted_kmeans_1d per (group, block column) on real ffn_down weights
    in 16 groups of unequal size: the same centroids up to float rounding, the same nearest codes."""
    layer, H = layer_data
    w = layer.mlp.down_proj.weight.data.float()
    groups = grouping.group_rows(w, 16)
    assert len(set(torch.bincount(groups).tolist())) > 1          # the padding is exercised
    zb = (w / w.pow(2).mean(1, keepdim=True).sqrt()).view(w.shape[0], -1, pack.QK)
    bimp = torch.diagonal(H["mlp.down_proj"]).clamp_min(1e-12).expand_as(w).reshape_as(zb)
    at_once = learn.JLCM.group_kmeans(zb, bimp, groups, 8)
    one = learn.JLCM.group_kmeans_loop(zb, bimp, groups, 8)
    assert torch.allclose(at_once, one, rtol=1e-5, atol=1e-6)
    z = zb.view_as(w)
    assert torch.equal(learn.JLCM._nearest(z, at_once, groups), learn.JLCM._nearest(z, one, groups))


def test_groups_default_per_type():
    assert learn.JLCM(pack.JLCM2).cfg.n_groups == 0 and learn.JLCM(pack.JLCM3).cfg.n_groups == 16
    assert learn.JLCM(pack.JLCM2, learn.Settings(n_groups=4)).cfg.n_groups == 4


def test_grouping_separates_differently_shaped_rows():
    g = torch.Generator().manual_seed(0)
    gauss = torch.randn(40, 256, generator=g)
    spiky = torch.randn(40, 256, generator=g) ** 3
    labels = grouping.group_rows(torch.cat([gauss, spiky]), 2, seed=0)
    assert len(set(labels[:40].tolist())) == 1 and len(set(labels[40:].tolist())) == 1
    assert labels[0] != labels[40]
    assert grouping.group_rows(gauss, 1).unique().tolist() == [0]
    assert grouping.group_rows(gauss, 0).tolist() == list(range(gauss.shape[0]))


def test_proximal_update_moves_to_a_neighbour_and_ste_jumps():
    """One weight at codeword -1 of {-3, -1, 1, 3} whose gradient asks it to grow a little."""
    C = torch.tensor([[[-3.0, -1.0, 1.0, 3.0]]])     # one group, one block column
    s = torch.ones(1)
    groups = torch.zeros(1, dtype=torch.long)
    idx = torch.ones(1, 64, dtype=torch.long)
    g = torch.full((1, 64), -3.0)       # a move by +2 pays -6 in slope, +4 in curvature
    hdiag = torch.ones(64)
    ste = learn.index_step(g, hdiag, s, C, groups, idx, "ste", 1.0)
    prox = learn.index_step(g, hdiag, s, C, groups, idx, "proximal", 1.0)
    assert (ste == 3).all()        # straight to the extreme codeword
    assert (prox == 2).all()       # the neighbouring codeword in the gradient's direction
    # and a weak gradient leaves the proximal index where it is
    assert (learn.index_step(g / 3, hdiag, s, C, groups, idx, "proximal", 1.0) == 1).all()


def test_index_sweep_makes_each_columns_best_move_given_the_others(layer_data):
    """sweep_indices against brute force: column by column, each row's index set to the codeword whose
    full loss, every other weight as it stands, is lowest. Blocks of 64 columns over 192, so both the
    update inside a block and the one between blocks are exercised."""
    layer, H = layer_data
    h = H["self_attn.q_proj"][:192, :192].double()
    w = layer.self_attn.q_proj.weight.data[:6, :192].double()
    q = learn.JLCM(pack.JLCM2, learn.Settings(n_groups=0))
    s, C, groups, idx = q.init(w, calibrate.Gram(h))
    got = learn.JLCM.sweep_indices(w, calibrate.Gram(h), s, C, groups, idx, block=64)
    want = idx.clone()
    for i in range(w.shape[1]):
        trials = []
        for k in range(C.shape[-1]):
            want[:, i] = k
            e = w - learn.JLCM.dequant(s, C, groups, want)
            trials.append(((e @ h) * e).sum(1))         # each row's loss
        want[:, i] = torch.stack(trials, 1).argmin(1)
    assert torch.equal(got, want)
    before = learn.JLCM.loss(w, learn.JLCM.dequant(s, C, groups, idx), calibrate.Gram(h))
    assert learn.JLCM.loss(w, learn.JLCM.dequant(s, C, groups, got), calibrate.Gram(h)) < 0.9 * before


def test_scale_refit_is_the_least_squares_optimum(layer_data):
    """fit_scales on a real ffn_down (24 blocks a row): the loss's gradient in the scales vanishes
    there, the loss is no higher than at the start, and a block whose codewords are all 0 (which
    the data cannot scale) keeps its scale."""
    layer, H = layer_data
    w = layer.mlp.down_proj.weight.data[:64].float()
    h = calibrate.Gram(H["mlp.down_proj"].float())
    q = learn.JLCM(pack.JLCM2, learn.Settings(n_groups=0))
    s, C, groups, idx = q.init(w, h)
    C[5, 3] = 0                                     # row 5's block 3: every codeword 0
    got = learn.JLCM.fit_scales(w, h, s, C, groups, idx).requires_grad_(True)
    loss = learn.JLCM.loss(w, learn.JLCM.dequant(got, C, groups, idx), h)
    loss.backward()
    norm = learn.JLCM.loss(w, torch.zeros_like(w), h)
    assert got.grad.norm() * got.detach().norm() < 1e-5 * norm
    assert loss < learn.JLCM.loss(w, learn.JLCM.dequant(s, C, groups, idx), h)
    assert torch.isclose(got[5 * 24 + 3], s[5 * 24 + 3])


WIDE_REFIT = """
import sys, torch
from jlcm_gguf import learn, pack
from jlcm_gguf.calibrate import Gram
torch.set_num_threads(2)
g = torch.Generator().manual_seed(0)
w = torch.randn(16, 11008, generator=g) * 0.02
h = Gram(factor=torch.randn(512, 11008, generator=g) / 512 ** 0.5)   # fewer tokens than inputs, as a 7B's
q = learn.JLCM(pack.JLCM2, learn.Settings(n_groups=0))
s, C, groups, idx = q.init(w, h)
got = learn.JLCM.fit_scales(w, h, s, C, groups, idx).requires_grad_(True)
loss = learn.JLCM.loss(w, learn.JLCM.dequant(got, C, groups, idx), h)
loss.backward()
norm = learn.JLCM.loss(w, torch.zeros_like(w), h)
print(float(got.grad.norm() * got.detach().norm() / norm))
"""


def test_scale_refit_is_the_optimum_for_wide_rows_after_set_num_threads():
    """A Llama-7B ffn_down row has 172 blocks: fit_scales solves 172-wide systems for many rows at once.
    torch's batched LU gets those wrong once torch.set_num_threads has been called (pytorch#142815),
    as a script driving the library may well do; the refit must still be the optimum. Random data:
    the default model has no row of more than 24 blocks. In a child process, since the thread
    setting stays for the rest of the process."""
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-c", WIDE_REFIT], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert float(r.stdout.split()[-1]) < 1e-5


@pytest.mark.parametrize("qtype", [pack.JLCM2, pack.JLCM3], ids=lambda t: t.name)
def test_index_step_in_row_chunks_gives_the_same_codes(layer_data, qtype, monkeypatch):
    """The index step's (rows, cols, K) work runs in row chunks to bound a 7B layer's memory; chunks of
    a few rows must give the bytes of one chunk for the whole tensor."""
    layer, H = layer_data
    w = layer.mlp.up_proj.weight.data[:256].float()
    whole = learn.JLCM(qtype, learn.Settings()).quantize(w, H["mlp.up_proj"]).blocks
    monkeypatch.setattr(learn, "CHUNK_FLOATS", 7 * 576 * qtype.n_codes)      # 7 rows a chunk, the last short
    assert np.array_equal(learn.JLCM(qtype, learn.Settings()).quantize(w, H["mlp.up_proj"]).blocks, whole)


def test_learning_lowers_the_output_error_on_real_weights(layer_data):
    layer, H = layer_data
    w = layer.self_attn.q_proj.weight.data
    errs = {}
    for name, cfg in {"kmeans": learn.Settings(update="none", error_feedback=False),
                      "ef": learn.Settings(update="none"),
                      "ste": learn.Settings(update="ste", outer_steps=3),
                      "proximal": learn.Settings(outer_steps=3)}.items():
        errs[name] = learn.JLCM(pack.JLCM2, cfg).quantize(w, H["self_attn.q_proj"]).rel_error
    assert errs["ef"] < 0.8 * errs["kmeans"]
    assert errs["proximal"] < errs["ef"]
    assert errs["proximal"] < errs["ste"]


@pytest.mark.parametrize("qtype", [pack.JLCM2, pack.JLCM3], ids=lambda t: t.name)
def test_quantize_is_deterministic_and_packs_what_it_reports(layer_data, qtype):
    layer, H = layer_data
    w = layer.mlp.down_proj.weight.data          # 576 x 1536
    cfg = learn.Settings(outer_steps=2, adam_steps=4)
    a = learn.JLCM(qtype, cfg).quantize(w, H["mlp.down_proj"])
    b = learn.JLCM(qtype, cfg).quantize(w, H["mlp.down_proj"])
    assert a.blocks.tobytes() == b.blocks.tobytes()
    assert a.blocks.shape == (576 * 1536 // 64, qtype.type_size)
    assert torch.equal(a.weight, torch.from_numpy(pack.dequantize(qtype, a.blocks)).view(576, 1536))
    assert 0 < a.rel_error < (0.1 if qtype is pack.JLCM2 else 0.03)


@pytest.mark.parametrize("qtype", [pack.JLCM2, pack.JLCM3], ids=lambda t: t.name)
@pytest.mark.parametrize("name", ["self_attn.q_proj", "mlp.down_proj"])
def test_c_column_walks_equal_the_eager_loops(layer_data, qtype, name):
    """csrc/jlcm-walk.c against the torch loops it replaces on the CPU, bit for bit: the error
    feedback and a sweep under either rule, on a real 576-wide and a real 1536-wide weight (blocks of
    128 columns, 64 at the end of the 576), with the default groups (JLCM3 shares codebooks)."""
    layer, H = layer_data
    w = layer.get_submodule(name).weight.data.float()
    h = calibrate.Gram(H[name].float())
    q = learn.JLCM(qtype)
    s, C, groups, _ = q.init(w, h)
    eager = q.error_feedback_assign(w, h, s, C, groups, c_walk=False)
    assert torch.equal(q.error_feedback_assign(w, h, s, C, groups, c_walk=True), eager)
    for rule in ("proximal", "ste"):
        want = learn.JLCM.sweep_indices(w, h, s, C, groups, eager, rule, c_walk=False)
        assert (want != eager).any()                    # the sweep moved something to agree on
        assert torch.equal(learn.JLCM.sweep_indices(w, h, s, C, groups, eager, rule, c_walk=True), want)


@pytest.mark.parametrize("c_walk", [False, True], ids=["eager", "C"])
def test_error_feedback_in_act_order_keeps_each_column_on_its_own_block(c_walk):
    """With a diagonal H no error is fed forward, so the walk must pick each weight's nearest codeword
    in its own block's codebook, whatever order act order walks the columns in (here, H_ii shuffled,
    two columns dead): a walk that took a column's block from its place in the walk would not."""
    g = torch.Generator().manual_seed(3)
    rows, cols, K = 8, 256, 8
    w = torch.randn(rows, cols, generator=g)
    hd = torch.rand(cols, generator=g) + 0.1
    hd[[5, 70]] = 0
    s = torch.rand(rows * cols // 64, generator=g) + 0.5
    C = torch.sort(torch.randn(rows, cols // 64, K, generator=g) * 2, dim=-1).values
    groups = torch.arange(rows)
    got = learn.JLCM.error_feedback_assign(w, calibrate.Gram(torch.diag(hd)), s, C, groups, c_walk=c_walk)
    z = w.view(rows, cols // 64, 64) / s.view(rows, cols // 64, 1)
    want = (z.unsqueeze(-1) - C.unsqueeze(2)).abs().argmin(-1).view(rows, cols)
    live = hd > 0
    assert torch.equal(got[:, live], want[:, live])
    order, _, _ = calibrate.Gram(torch.diag(hd)).feedback_factor(0.01, act_order=True)
    assert torch.equal(hd[order], torch.sort(hd, descending=True).values)


def test_c_column_walks_refuse_arrays_they_cannot_read():
    from jlcm_gguf import kernels
    S, CB = np.ones((4, 1), np.float32), np.zeros((4, 1, 4), np.float32)
    U, idx, err = np.eye(64, dtype=np.float32), np.zeros((4, 64), np.int64), np.zeros((4, 64), np.float32)
    cols = np.zeros(64, np.int64)
    with pytest.raises(ValueError, match="W: need a 2-D float32"):
        kernels.walk_feedback(np.zeros((4, 64)), S, CB, U, cols, idx, err)           # float64
    with pytest.raises(ValueError, match="U: need a 2-D float32 array with contiguous rows"):
        strided = np.eye(64, 128, dtype=np.float32)[:, ::2]
        kernels.walk_feedback(np.zeros((4, 64), np.float32), S, CB, strided, cols, idx, err)
    with pytest.raises(ValueError, match="K <= 16"):
        kernels.walk_feedback(np.zeros((4, 64), np.float32), S, np.zeros((4, 1, 32), np.float32), U, cols, idx, err)
    with pytest.raises(ValueError, match="col_block must give each of the 64 columns a block column below 1"):
        kernels.walk_feedback(np.zeros((4, 64), np.float32), S, CB, U, cols + 1, idx, err)


GPU_WALK = """
import sys, torch
from jlcm_gguf.calibrate import Gram
from jlcm_gguf.learn import JLCM
w, h, s, C, groups = torch.load(sys.argv[1])
torch.save(JLCM.error_feedback_assign(w, Gram(h), s, C, groups, gpu_walk=True), sys.argv[2])
"""


@pytest.mark.parametrize("qtype", [pack.JLCM2, pack.JLCM3], ids=lambda t: t.name)
def test_gpu_column_walk_assigns_what_the_eager_walk_does(layer_data, qtype, tmp_path):
    """feedback_triton's kernel (the error feedback's column loop on a GPU), run on the CPU by Triton's
    interpreter, against the eager loop: 16 rows of a real q_proj, 576 columns (blocks of 128 and 64).
    The interpreter must be chosen before triton is first imported, hence the second process."""
    import os
    import subprocess
    import sys
    pytest.importorskip("triton")
    layer, H = layer_data
    w = layer.self_attn.q_proj.weight.data[:16].float()
    h = H["self_attn.q_proj"].float()
    q = learn.JLCM(qtype)
    s, C, groups, _ = q.init(w, calibrate.Gram(h))
    eager = q.error_feedback_assign(w, calibrate.Gram(h), s, C, groups, gpu_walk=False, c_walk=False)
    torch.save((w, h, s, C, groups), tmp_path / "in.pt")
    subprocess.run([sys.executable, "-c", GPU_WALK, str(tmp_path / "in.pt"), str(tmp_path / "out.pt")],
                   check=True, env={**os.environ, "TRITON_INTERPRET": "1"})
    assert torch.equal(torch.load(tmp_path / "out.pt"), eager)
    assert len(torch.unique(eager)) == qtype.n_codes


def test_rows_must_be_a_multiple_of_64():
    with pytest.raises(ValueError, match="multiple of 64"):
        learn.JLCM(pack.JLCM2).quantize(torch.randn(8, 96), torch.eye(96))


def test_model_loop_quantizes_layer_by_layer():
    from jlcm_gguf.calibrate import WeightStore
    from jlcm_gguf.distill import DistillSettings
    from jlcm_gguf.quantize import Plan, quantize_model
    hf = assets.hf_model_dir()
    text = assets.text_file("emma").read_text(encoding="utf-8")
    plan = Plan(lambda i, name: pack.JLCM3 if name == "mlp.down_proj" else pack.JLCM2,
                learn.Settings(outer_steps=1, adam_steps=2), DistillSettings(epochs=0))
    res = quantize_model(hf, text, plan, n_seqs=2, seq_len=128, quiet=True, n_layers=2).linears
    assert len(res) == 14
    assert all(r.dequantized is None for r in res.values())     # blocks only: one layer in float at a time
    store = WeightStore(hf)
    down = res["model.layers.1.mlp.down_proj.weight"]
    assert down.blocks.shape[1] == pack.JLCM3.type_size
    assert res["model.layers.0.self_attn.k_proj.weight"].blocks.shape == (192 * 576 // 64, pack.JLCM2.type_size)
    w = store.get("model.layers.1.mlp.down_proj.weight").float()
    assert 0 < ((down.weight - w).norm() / w.norm()).item() < 0.5


@pytest.mark.parametrize("sequential", [False, True])
def test_sequential_measures_o_and_down_inputs_after_the_codes(monkeypatch, sequential):
    """Settings.sequential: o_proj learns on the input its layer gives once q/k/v hold their codes, and
    down_proj on the input after gate/up do too; without it, both on the layer's float-weight inputs."""
    from jlcm_gguf import quantize
    from jlcm_gguf.calibrate import LayerStream, calibration_tokens, collect_hessians
    from jlcm_gguf.distill import DistillSettings
    from transformers import AutoTokenizer
    hf = assets.hf_model_dir()
    text = assets.text_file("emma").read_text(encoding="utf-8")
    seen = []
    real = learn.JLCM.quantize
    monkeypatch.setattr(learn.JLCM, "quantize", lambda self, w, H: seen.append(H.full().clone()) or real(self, w, H))
    plan = quantize.Plan(lambda i, name: pack.JLCM2, learn.Settings(outer_steps=1, adam_steps=2, sweeps=0,
                                                                     sequential=sequential), DistillSettings(epochs=0))
    res = quantize.quantize_model(hf, text, plan, n_seqs=2, seq_len=128, quiet=True, n_layers=1).linears
    stream = LayerStream(hf)
    hidden = stream.embed(calibration_tokens(AutoTokenizer.from_pretrained(hf), text, 2, 128, 0))
    layer = stream.layer(0)
    before = collect_hessians(stream, layer, hidden)
    for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj"):
        layer.get_submodule(name).weight.data.copy_(res[f"model.layers.0.{name}.weight"].weight)
    after_qkv_gate_up = collect_hessians(stream, layer, hidden)
    layer.self_attn.o_proj.weight.data.copy_(res["model.layers.0.self_attn.o_proj.weight"].weight)
    after_o = collect_hessians(stream, layer, hidden)
    order = list(calibrate.LINEARS)
    close = lambda a, b: torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6 * b.abs().max().item())  # noqa: E731
    h_o, h_down = seen[order.index("self_attn.o_proj")], seen[order.index("mlp.down_proj")]
    if sequential:
        close(h_o, after_qkv_gate_up["self_attn.o_proj"])
        close(h_down, after_o["mlp.down_proj"])         # down's input depends on o, through the residual, and gate/up
    else:
        close(h_o, before["self_attn.o_proj"])
        close(h_down, before["mlp.down_proj"])
    assert not torch.allclose(before["self_attn.o_proj"], after_qkv_gate_up["self_attn.o_proj"])


def test_held_stock_weights_feed_the_later_layers():
    """Only layer 1's ffn_down is JLCM; the file holds the other linears as Q4_0. The learner must see
    inputs through those Q4_0 weights (a different result than through float ones), and the distillation
    must start from them too."""
    from jlcm_gguf import gguf_write
    from jlcm_gguf.distill import DistillSettings
    from jlcm_gguf.quantize import Plan, quantize_model
    hf = assets.hf_model_dir()
    text = assets.text_file("emma").read_text(encoding="utf-8")
    fast = learn.Settings(outer_steps=1, adam_steps=2)
    choose = lambda i, name: pack.JLCM2 if (i, name) == (1, "mlp.down_proj") else None
    calls = []

    def q4_0(name, w):
        calls.append(name)
        return torch.from_numpy(gguf_write.stock_values("Q4_0", w.numpy()))

    kw = dict(n_seqs=2, seq_len=128, quiet=True, n_layers=2)
    key = "model.layers.1.mlp.down_proj.weight"
    plain = quantize_model(hf, text, Plan(choose, fast, DistillSettings(epochs=0)), **kw).linears[key]
    held = quantize_model(hf, text, Plan(choose, fast, DistillSettings(epochs=0), held=q4_0), **kw).linears[key]
    assert sorted(calls) == sorted(f"model.layers.{i}.{n}.weight" for i in range(2) for n in calibrate.LINEARS
                                   if (i, n) != (1, "mlp.down_proj"))
    assert not np.array_equal(plain.blocks, held.blocks)
    calls.clear()
    quantize_model(hf, text, Plan(choose, fast, DistillSettings(epochs=1, seqs=0), held=q4_0), **kw)
    assert len(calls) == 2 * 13          # once for the layer-wise pass, once for the distillation's model


def test_distillation_rescales_blocks_and_lowers_the_kl():
    """Layers 0-3 in JLCM2 (k-means codes, no learning: a large error to repair), then distillation.
    Only block scales and norm gains may change; the KL on held-out text must fall."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from jlcm_gguf import distill
    from jlcm_gguf.quantize import Plan, quantize_model
    hf = assets.hf_model_dir()
    emma = assets.text_file("emma").read_text(encoding="utf-8")
    crude = learn.Settings(update="none", error_feedback=False)
    before = quantize_model(hf, emma, Plan(lambda i, n: pack.JLCM2, crude, distill.DistillSettings(epochs=0)),
                            n_seqs=4, seq_len=128, quiet=True, n_layers=4)
    after = quantize_model(hf, emma, Plan(lambda i, n: pack.JLCM2, crude, distill.DistillSettings(epochs=3, seqs=0)),
                           n_seqs=4, seq_len=128, quiet=True, n_layers=4)
    assert after.distill_history[-1] < after.distill_history[0]
    assert set(after.norms) >= {"model.norm.weight", "model.layers.0.input_layernorm.weight"}
    for name, a in after.linears.items():
        b = before.linears[name]
        da, cba, ia = pack.unpack(a.qtype, a.blocks)
        db, cbb, ib = pack.unpack(b.qtype, b.blocks)
        assert np.array_equal(cba, cbb) and np.array_equal(ia, ib)      # codes untouched
        assert torch.equal(a.weight, torch.from_numpy(pack.dequantize(a.qtype, a.blocks)).view_as(a.weight))
    assert any(not np.array_equal(pack.unpack(a.qtype, a.blocks)[0], pack.unpack(a.qtype, before.linears[n].blocks)[0])
               for n, a in after.linears.items())

    tok = AutoTokenizer.from_pretrained(hf)
    held_out = calibrate.calibration_tokens(tok, assets.text_file("persuasion").read_text(encoding="utf-8"), 2, 128, 0)
    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32)
    with torch.no_grad():
        teacher = torch.log_softmax(model(held_out).logits, -1)

        def kl(q):
            sd = model.state_dict()
            for k, r in q.linears.items():
                sd[k].copy_(r.weight)
            for k, v in q.norms.items():
                sd[k].copy_(v)
            return distill.kl_to_teacher(teacher, model(held_out).logits).item()
        kl_before, kl_after = kl(before), kl(after)
    assert kl_after < 0.9 * kl_before


def test_distillation_calls_after_step_and_returns_the_codes_it_changed():
    """after_step (bench/index_moves.py) sees every step, and an index it moves in `quantized` is in the
    blocks the distillation returns, re-scaled but not put back."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from jlcm_gguf import distill
    hf = assets.hf_model_dir()
    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32)
    tokens = calibrate.calibration_tokens(AutoTokenizer.from_pretrained(hf),
                                          assets.text_file("emma").read_text(encoding="utf-8"), 2, 64, 0)
    caught = []
    hook = model.model.norm.register_forward_hook(lambda mod, args, out: caught.append(args[0].detach()))
    with torch.no_grad():
        model.model(tokens)
    hook.remove()
    name = "model.layers.0.mlp.down_proj.weight"
    lin = model.get_submodule(name.removesuffix(".weight"))
    crude = learn.JLCM(pack.JLCM2, learn.Settings(update="none", error_feedback=False))
    r = crude.quantize(lin.weight.detach(), torch.eye(lin.in_features))
    with torch.no_grad():
        lin.weight.copy_(r.weight)
    quantized = {name: (pack.JLCM2, r.blocks)}
    d, cb, idx = pack.unpack(pack.JLCM2, r.blocks)
    moved = idx.copy()
    moved[0, 0] = (idx[0, 0] + 1) % 4
    seen = []

    def after_step(m, k):
        seen.append(k)
        if k == 1:
            quantized[name] = (pack.JLCM2, pack.pack(pack.JLCM2, d, cb, moved))
            par = m.get_submodule(name.removesuffix(".weight")).parametrizations.weight
            with torch.no_grad():
                par.original[0, 0] = float(d[0]) * float(cb[0, moved[0, 0]])

    blocks, _, _ = distill.distill(model, quantized, tokens, caught[0], distill.DistillSettings(epochs=2),
                                   quiet=True, after_step=after_step)
    assert seen == [1, 2, 3, 4]
    d2, cb2, idx2 = pack.unpack(pack.JLCM2, blocks[name])
    assert np.array_equal(idx2, moved) and np.array_equal(cb2, cb)
    assert torch.equal(lin.weight, torch.from_numpy(pack.dequantize(pack.JLCM2, blocks[name])).view_as(lin.weight))


def test_float_target_matches_the_float_output_and_is_w_where_paths_agree():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 64, generator=g, dtype=torch.float64)
    xf = torch.randn(4096, 64, generator=g, dtype=torch.float64)
    # inputs after upstream error: mostly a distortion a weight can undo, plus noise
    mix = torch.eye(64, dtype=torch.float64) + 0.05 * torch.randn(64, 64, generator=g, dtype=torch.float64)
    x = xf @ mix + 0.05 * torch.randn(4096, 64, generator=g, dtype=torch.float64)
    H, B = calibrate.second_moment(x).double(), calibrate.second_moment(xf, x).double()
    assert torch.allclose(learn.float_target(w, H, H), w)
    T = learn.float_target(w, H, B, damp=0.0)
    # T is the least-squares weight for reproducing the float output from these inputs
    lstsq = torch.linalg.lstsq(x, xf @ w.T).solution.T
    assert torch.allclose(T, lstsq, atol=1e-4)
    assert (xf @ w.T - x @ T.T).norm() < 0.3 * (xf @ w.T - x @ w.T).norm()


def test_factored_gram_matches_the_full_matrix_and_the_codes():
    """Fewer tokens than features (here 512 inputs of ffn_down, 1536 wide): the loss runs on X, not
    X^T X, with the same values and codes of the same quality."""
    from transformers import AutoTokenizer
    hf = assets.hf_model_dir()
    stream = calibrate.LayerStream(hf)
    text = assets.text_file("emma").read_text(encoding="utf-8")
    hidden = stream.embed(calibrate.calibration_tokens(AutoTokenizer.from_pretrained(hf), text, 4, 128, seed=0))
    for i in range(2):
        hidden = stream.run(stream.layer(i), hidden)
    layer = stream.layer(2)
    x = calibrate.capture_inputs(stream, layer, hidden, ["mlp.down_proj"])[0]["mlp.down_proj"]
    assert x.shape == (512, 1536)
    fac, full = calibrate.Gram.of(x), calibrate.Gram(calibrate.second_moment(x))
    assert fac.h is None and fac.factor is not None
    assert calibrate.Gram.of(x[:, :256]).h is not None            # enough tokens: the matrix itself
    w = layer.mlp.down_proj.weight.data.float()
    d = w[:64] - w[64:128]
    torch.testing.assert_close(fac.full(), full.full(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(fac.diag(), full.diag(), rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(fac.quad(d), full.quad(d), rtol=1e-4, atol=0)
    torch.testing.assert_close(fac.times(d), full.times(d), rtol=1e-3, atol=1e-6)
    # the scale refit's factored path (A_r = V_r V_r^T) solves the same least squares as the full one
    s, C, groups, idx = learn.JLCM(pack.JLCM2, learn.Settings(n_groups=0)).init(w[:128], full)
    torch.testing.assert_close(learn.JLCM.fit_scales(w[:128], fac, s, C, groups, idx),
                               learn.JLCM.fit_scales(w[:128], full, s, C, groups, idx), rtol=1e-3, atol=1e-7)
    cfg = learn.Settings(outer_steps=1)
    a = learn.JLCM(pack.JLCM2, cfg).quantize(w[:128], fac)
    b = learn.JLCM(pack.JLCM2, cfg).quantize(w[:128], full)
    assert abs(a.rel_error - b.rel_error) < 0.02 * b.rel_error     # near-ties may round either way
