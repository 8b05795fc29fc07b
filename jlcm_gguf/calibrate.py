"""Calibration: run the model one decoder layer at a time and collect each linear input's H = X^T X / n.

Only one decoder layer is ever built in float; its weights are read from the
safetensors files on demand. The hidden states of all calibration sequences
(n_seqs x seq_len x hidden) are the only other large buffer.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

# HF linear names in a llama-family decoder layer, grouped by the input they share.
SHARED_INPUTS = {
    "self_attn.q_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "self_attn.o_proj": ("self_attn.o_proj",),
    "mlp.gate_proj": ("mlp.gate_proj", "mlp.up_proj"),
    "mlp.down_proj": ("mlp.down_proj",),
}
LINEARS = tuple(n for names in SHARED_INPUTS.values() for n in names)


class WeightStore:
    """Tensors of an HF checkpoint (one safetensors file or a sharded index), read lazily."""

    def __init__(self, hf_dir: Path):
        from safetensors import safe_open

        self.dir = Path(hf_dir)
        index = self.dir / "model.safetensors.index.json"
        if index.exists():
            self.where = json.loads(index.read_text())["weight_map"]
        else:
            with safe_open(self.dir / "model.safetensors", "pt") as f:
                self.where = {k: "model.safetensors" for k in f.keys()}
        self._open = {}

    def get(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        shard = self.where[name]
        if shard not in self._open:
            self._open[shard] = safe_open(self.dir / shard, "pt")
        return self._open[shard].get_tensor(name)

    def has(self, name: str) -> bool:
        return name in self.where

    def close(self) -> None:
        """Let go of the open shards. Each maps its file, and every page read through it stays in this
        process's RSS while it is open: a whole 7B checkpoint (13.5 GB) by the last layer."""
        self._open.clear()


class LayerStream:
    """Builds the decoder layers of an HF llama-family model one at a time, float32, on `device`."""

    def __init__(self, hf_dir: Path, device: str = "cpu"):
        from transformers import AutoConfig, AutoModelForCausalLM

        self.config = AutoConfig.from_pretrained(hf_dir)
        self.config._attn_implementation = "sdpa"
        self.store = WeightStore(hf_dir)
        self.device = device
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(self.config)
        self.layer_cls = type(skeleton.model.layers[0])
        self.rotary = type(skeleton.model.rotary_emb)(config=self.config).to(device)
        self.n_layers = self.config.num_hidden_layers

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        table = self.store.get("model.embed_tokens.weight").float()
        out = table[tokens].to(self.device)
        del table
        self.store.close()
        return out

    def layer(self, i: int) -> torch.nn.Module:
        layer = self.layer_cls(self.config, i)
        prefix = f"model.layers.{i}."
        state = {k[len(prefix):]: self.store.get(k).float() for k in self.store.where if k.startswith(prefix)}
        layer.load_state_dict(state, strict=True)     # copies into the layer's own tensors
        del state
        self.store.close()
        return layer.to(self.device).float().eval()

    def run(self, layer: torch.nn.Module, hidden: torch.Tensor, batch: int = 4) -> torch.Tensor:
        """Apply a decoder layer to every sequence (causal attention, positions from 0)."""
        out = torch.empty_like(hidden)
        pos = torch.arange(hidden.shape[1], device=self.device).unsqueeze(0)
        with torch.no_grad():
            for b in range(0, hidden.shape[0], batch):
                h = hidden[b:b + batch]
                pe = self.rotary(h, pos)
                out[b:b + batch] = layer(h, attention_mask=None, position_ids=pos, position_embeddings=pe)
        return out


def _run_hooked(stream: LayerStream, layer: torch.nn.Module, hidden: torch.Tensor, sources, on_input) -> torch.Tensor:
    """Run the layer, calling on_input(source, x) with each batch's input x of the `sources` linears."""
    hooks = [layer.get_submodule(src).register_forward_pre_hook(lambda _m, args, src=src: on_input(src, args[0]))
             for src in sources]
    try:
        return stream.run(layer, hidden)
    finally:
        for h in hooks:
            h.remove()


def capture_inputs(stream: LayerStream, layer: torch.nn.Module, hidden: torch.Tensor, sources) -> tuple[dict, torch.Tensor]:
    """Run the layer; return the inputs X (tokens x features) of the `sources` linears, and its output."""
    xs: dict[str, list] = {src: [] for src in sources}
    out = _run_hooked(stream, layer, hidden, sources, lambda src, x: xs[src].append(x.reshape(-1, x.shape[-1])))
    return {src: torch.cat(v) for src, v in xs.items()}, out


def second_moment(x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """X^T Y / n (Y = X by default), accumulated in float64."""
    y = x if y is None else y
    return (x.double().T @ y.double() / x.shape[0]).float()


class Gram:
    """H = X^T X / n, as the layer-wise loss uses it. With fewer calibration tokens than input
    features it keeps F = X / sqrt(n) instead (H = F^T F): the loss tr(D H D^T) = |D F^T|^2 then
    costs rows * n * cols multiply-adds, not rows * cols^2 -- for a 7B model's ffn_down with 512
    tokens, 2.3e10 instead of 5.0e11 per evaluation."""

    def __init__(self, h: torch.Tensor | None = None, factor: torch.Tensor | None = None):
        self.h, self.factor = h, factor
        self._feedback = {}

    @classmethod
    def of(cls, x: torch.Tensor) -> "Gram":
        n, cols = x.shape
        return cls(factor=x.float() / n ** 0.5) if n < cols else cls(h=second_moment(x))

    def to(self, device) -> "Gram":
        if all(t is None or t.device == torch.device(device) for t in (self.h, self.factor)):
            return self         # keeps what is cached on it
        return Gram(*(None if t is None else t.to(device) for t in (self.h, self.factor)))

    def feedback_factor(self, damp: float, act_order: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(order, dead, U) for the error feedback: the order its walk takes the inputs in (act_order:
        by falling H_ii, GPTQ's act order; else as they come), and in that order the inputs that are
        never nonzero and the upper Cholesky factor of (H + damp * mean(diag H) * I)^-1 with the dead
        inputs' diagonal set to 1. Cached: the linears that share an input (q/k/v, gate/up) and the
        assignment's two walks per linear need one."""
        key = damp, act_order
        if key not in self._feedback:
            d = self.diag()
            cols = d.shape[0]
            # stable: equal diagonals (dead inputs) keep their order, so the bytes are fixed
            order = (torch.argsort(d, descending=True, stable=True) if act_order
                     else torch.arange(cols, device=d.device))
            # one permuted copy (of the factor, where H is kept factored), as the unpermuted clone was
            H = (self.h[order[:, None], order[None, :]] if self.h is not None
                 else self.factor[:, order].T @ self.factor[:, order])
            dead = torch.diagonal(H) == 0
            H[dead, dead] = 1
            H += damp * torch.diagonal(H).mean() * torch.eye(cols, dtype=H.dtype, device=H.device)
            L = torch.linalg.cholesky(H)
            self._feedback[key] = order, dead, torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True).contiguous()
        return self._feedback[key]

    def full(self) -> torch.Tensor:
        return self.h if self.h is not None else self.factor.T @ self.factor

    def diag(self) -> torch.Tensor:
        return torch.diagonal(self.h) if self.h is not None else self.factor.pow(2).sum(0)

    def quad(self, d: torch.Tensor) -> torch.Tensor:
        """tr(D H D^T)"""
        return (d @ self.h * d).sum() if self.h is not None else (d @ self.factor.T).pow(2).sum()

    def times(self, d: torch.Tensor) -> torch.Tensor:
        """D H"""
        return d @ self.h if self.h is not None else (d @ self.factor.T) @ self.factor


class _Moments:
    """X^T X of one input, summed in float64 a batch at a time as the layer runs, so the inputs
    of all calibration tokens are never held together. X itself is kept only while it has fewer
    rows than columns (then it may stay the loss's factor, see `Gram`)."""

    def __init__(self):
        self.xs, self.h, self.n = [], None, 0

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1])
        self.n += x.shape[0]
        if self.h is not None:
            self.h += (x.T @ x).double()        # a batch's product in float32, the sum over batches in float64
            return
        self.xs.append(x.clone())
        if self.n >= x.shape[1]:
            xs = torch.cat(self.xs)
            self.xs, self.h = [], (xs.T @ xs).double()

    def gram(self, factored: bool) -> Gram:
        if self.h is None:
            x = torch.cat(self.xs)
            return Gram.of(x) if factored else Gram(second_moment(x))
        return Gram((self.h / self.n).float())


def collect_hessians(stream: LayerStream, layer: torch.nn.Module, hidden: torch.Tensor,
                     gram: bool = False, weights: dict[str, torch.Tensor] | None = None) -> dict:
    """H = X^T X / n for the input of every linear in the layer (shared inputs computed once);
    gram=True gives them as `Gram`s (factored where tokens are fewer than features).
    weights: a weight per token (sequence-major) for each linear, H = sum_t w_t x_t x_t^T / n
    (`token_weights`); linears that share an input then get an H each."""
    if weights is None:
        acc = {src: _Moments() for src in SHARED_INPUTS}
        _run_hooked(stream, layer, hidden, SHARED_INPUTS, lambda src, x: acc[src].add(x))
        shared = {src: a.gram(factored=gram) for src, a in acc.items()}
        return {lin: shared[src] if gram else shared[src].full() for src, lins in SHARED_INPUTS.items() for lin in lins}
    acc = {lin: _Moments() for lin in LINEARS}
    seen = {src: 0 for src in SHARED_INPUTS}

    def add(src, x):
        x = x.reshape(-1, x.shape[-1])
        a, seen[src] = seen[src], seen[src] + x.shape[0]
        for lin in SHARED_INPUTS[src]:
            acc[lin].add(x * weights[lin][a:seen[src]].to(x.device).sqrt().unsqueeze(1))

    _run_hooked(stream, layer, hidden, SHARED_INPUTS, add)
    return {lin: a.gram(factored=gram) if gram else a.gram(factored=False).full() for lin, a in acc.items()}


def output_energy(model, tokens: torch.Tensor, score_from: int, quiet: bool = True) -> dict[tuple[int, str], torch.Tensor]:
    """e_t = |dL/dy_t|^2 for the output y of every linear (by (layer index, HF name)) at every calibration
    token (sequence-major), L the float model's next-token cross-entropy on positions score_from and on.
    The evaluation scores the second half of each window; a window's first tokens, with no context,
    would otherwise hold most of the gradient."""
    from tqdm import tqdm
    for p in model.parameters():
        p.requires_grad_(False)         # gradients of activations only: no weight gradient is formed
    energy: dict[tuple[int, str], list] = {}

    def keep(key):
        return lambda _m, _gi, go: energy.setdefault(key, []).append(go[0].pow(2).sum(-1).flatten().cpu())

    hooks = [layer.get_submodule(lin).register_full_backward_hook(keep((i, lin)))
             for i, layer in enumerate(model.model.layers) for lin in LINEARS]
    try:
        for seq in tqdm(tokens.split(1), desc="output gradients", unit="seq", leave=False, disable=quiet):
            x = model.model.embed_tokens(seq).requires_grad_(True)     # so the graph reaches every linear
            h = model.model(inputs_embeds=x).last_hidden_state[0, score_from - 1:-1]
            logits = model.lm_head(h)                                  # the scored positions only
            torch.nn.functional.cross_entropy(logits.float(), seq[0, score_from:], reduction="sum").backward()
    finally:
        for hook in hooks:
            hook.remove()
    # backward visits the sequences in order, so the parts concatenate in token order
    return {key: torch.cat(parts) for key, parts in energy.items()}


def token_weights(energy: dict[tuple[int, str], torch.Tensor], mix: float) -> dict[tuple[int, str], torch.Tensor]:
    """w_t = (1 - mix) + mix * e_t / mean(e): mix = 0 is the plain H, 1 GuidedQuant's (one group of rows)."""
    return {key: (1 - mix) + mix * e / e.mean().clamp_min(torch.finfo(e.dtype).tiny) for key, e in energy.items()}


def float_layers(stream: LayerStream, hidden: torch.Tensor, wanted):
    """(i, layer, H) for each wanted layer index, every layer up to the last wanted one run on the float path
    (for measurements on single layers, bench/)."""
    last = max(wanted)
    for i in range(last + 1):
        layer = stream.layer(i)
        if i in wanted:
            yield i, layer, collect_hessians(stream, layer, hidden)
        if i < last:        # the last layer's output is never read
            hidden = stream.run(layer, hidden)


def collect_cross_moments(stream: LayerStream, layer: torch.nn.Module, float_hidden: torch.Tensor,
                          hidden: torch.Tensor) -> tuple[dict, dict, torch.Tensor]:
    """For every linear input: H = X^T X / n on this (quantized) path and B = X_f^T X / n, X_f the same
    input on the float model's path. Also returns the layer's output on the float path."""
    xs, _ = capture_inputs(stream, layer, hidden, SHARED_INPUTS)
    xf, out = capture_inputs(stream, layer, float_hidden, SHARED_INPUTS)
    H = {src: second_moment(x) for src, x in xs.items()}
    B = {src: second_moment(xf[src], x) for src, x in xs.items()}
    per_lin = lambda d: {lin: d[src] for src, lins in SHARED_INPUTS.items() for lin in lins}
    return per_lin(H), per_lin(B), out


def calibration_windows(tokenizer, text: str, n_seqs: int, seq_len: int, seed: int,
                        n_more: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n_seqs + n_more disjoint windows of seq_len tokens at seeded random offsets of the tokenized text,
    in text order, and the indices of the first n_seqs drawn among them. The first n_seqs are the windows
    calibration_tokens gives for n_seqs: more windows (the distillation's) never change the calibration's."""
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids[0]
    if ids.numel() < (n_seqs + n_more) * seq_len:
        raise ValueError(f"calibration text has {ids.numel()} tokens, fewer than {n_seqs + n_more} windows of "
                         f"{seq_len}")
    g = torch.Generator().manual_seed(seed)
    slots = ids.numel() // seq_len
    drawn = torch.randperm(slots, generator=g)[:n_seqs + n_more]
    pick, order = torch.sort(drawn)
    first = torch.nonzero(order < n_seqs).flatten()
    return torch.stack([ids[p * seq_len:(p + 1) * seq_len] for p in pick.tolist()]), first


def calibration_tokens(tokenizer, text: str, n_seqs: int, seq_len: int, seed: int) -> torch.Tensor:
    """n_seqs windows of seq_len tokens at seeded random offsets of the tokenized text."""
    return calibration_windows(tokenizer, text, n_seqs, seq_len, seed)[0]
