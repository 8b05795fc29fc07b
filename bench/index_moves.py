#!/usr/bin/env python3
"""Index moves driven by the end-to-end loss: the proximal index step, taken during the distillation.

    python bench/index_moves.py [--type JLCM2] [--runs "moves=0;moves=4,rho=8192"] [--probe]

The layer-wise stage fits indices to each layer's own output error; the
distillation (docs/METHOD.md, step 8) then fits only block scales and norm
gains to the model's KL. Here the indices also move during the distillation,
by the layer-wise rule (learn.move_scores) with the end-to-end gradient in
place of the layer's:

    weight (r, i) takes the codeword of its block minimizing  G delta + rho h delta^2,
    delta = m d (C[c'] - C[c]),  G = dKL/dw averaged over the steps since the last move,
    h[r, i] = a[r] b[i]

h is the Kronecker-factored diagonal of the Fisher: b the mean squared input i,
a the mean squared gradient of output r of -log p(y), with y drawn from the
model's own next-token distribution (4 windows, before the distillation). Only
moves with a negative score are taken, at most `frac` of a linear's weights a
step, the best first.

Every run starts from the same cached layer-wise codes as
bench/distill_variants.py (the default settings, 64 calibration windows) and
is evaluated as its rows are (torch, Pride and Prejudice, ctx 512 x 60 chunks,
KLD against float).

A run is `key=value,...`:
  moves=K  a move every K distillation steps (0: none, the plain distillation)
  rho=R    the proximal weight (0.5 is the second-order Taylor term)
  frac=F   the most of a linear's indices one move takes (default 0.001)
  start=S  steps before the gradient is first summed
  exact=1  h the Fisher's diagonal itself, the mean of u^2 x^2 over tokens, not a[r] b[i]
           (the two differ where large inputs and large output gradients share tokens)

--probe adds one experiment without distillation: from the layer-wise codes, G
summed over windows 0-1, one move for each of a few rho, the KL on window 5
(not among them) before and after; with either curvature.

Results: bench/results/index_moves.json.
"""
from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize

from jlcm_gguf import assets, distill, evaluate, pack, scoreboard
from jlcm_gguf.learn import move_scores

sys.path.insert(0, str(Path(__file__).resolve().parent))
import distill_variants as dv  # noqa: E402  (the cached layer-wise state and its model)
import quantizer as qbench  # noqa: E402  (the JLCM rows' evaluation, reused)

RESULTS = Path(__file__).resolve().parent / "results"


class IndexMoves:
    """The moves of one distillation: codes, summed gradients and curvature factors per JLCM linear."""

    def __init__(self, model, quantized: dict, rho: float, frac: float, exact: bool = False):
        self.model, self.quantized, self.rho, self.frac, self.exact = model, quantized, rho, frac, exact
        self.codes, self.grad, self.out_sq, self.in_sq, self.a, self.fisher = {}, {}, {}, {}, {}, {}
        for name, (qtype, blocks) in quantized.items():
            rows, cols = self._linear(name).weight.shape
            d, cb, idx = pack.unpack(qtype, blocks)
            self.codes[name] = (torch.from_numpy(d.astype(np.float32)).view(rows, -1),
                                torch.from_numpy(cb.astype(np.float32)).view(rows, cols // pack.QK, -1),
                                torch.from_numpy(idx).view(rows, cols))
            self.grad[name] = torch.zeros(rows, cols)
            self.out_sq[name], self.in_sq[name] = torch.zeros(rows), torch.zeros(cols)
        self.hooks = [self._linear(n).register_forward_hook(self._hook(n)) for n in quantized]
        self.fisher_pass = False
        self.steps = self.tokens = self.moved = 0

    def _linear(self, name):
        return self.model.get_submodule(name.removesuffix(".weight"))

    def _hook(self, name):
        def hook(module, args, out):
            if not torch.is_grad_enabled():
                return
            x = args[0].detach().flatten(0, -2)
            if self.fisher_pass and self.exact:
                out.register_hook(lambda g: _add(self.fisher[name], g.flatten(0, -2).pow(2).T @ x.pow(2)))
            elif self.fisher_pass:
                out.register_hook(lambda g: _add(self.out_sq[name], g.flatten(0, -2).pow(2).sum(0)))
            else:       # G = sum over tokens of (dL/dy) x^T, the weight's gradient, summed here
                self.in_sq[name].add_(x.pow(2).sum(0))
                out.register_hook(lambda g: _add(self.grad[name], g.flatten(0, -2).T @ x))
        return hook

    def measure_fisher(self, tokens: torch.Tensor, seed: int = 0):
        """a of the curvature (with exact, the whole diagonal): one backward pass per window of -log p(y),
        y drawn from the model."""
        gen = torch.Generator().manual_seed(seed)
        self.fisher_pass = True
        if self.exact:
            self.fisher = {n: torch.zeros_like(g) for n, g in self.grad.items()}
        for t in tokens.split(1):
            emb = self.model.model.embed_tokens(t).detach().requires_grad_(True)    # a graph without weight grads
            logits = self.model.lm_head(self.model.model(inputs_embeds=emb).last_hidden_state).float().flatten(0, -2)
            y = torch.multinomial(F.softmax(logits.detach(), -1), 1, generator=gen).squeeze(1)
            F.cross_entropy(logits, y).backward()
        for name in self.codes:     # cross_entropy's mean over T tokens: T * sum of squares / T^2 per window
            self.a[name] = self.out_sq[name] * tokens.shape[1] / tokens.shape[0]
            if self.exact:      # the mean over tokens of u^2 x^2, as a is of u^2
                self.fisher[name] *= tokens.shape[1] / tokens.shape[0]
        self.fisher_pass = False
        self.reset()

    def reset(self):
        for name in self.codes:
            self.grad[name].zero_()
            self.in_sq[name].zero_()
        self.steps = self.tokens = 0

    def observe(self, tokens: int):
        self.steps += 1
        self.tokens += tokens

    @torch.no_grad()
    def step(self) -> int:
        """Move indices by what was summed since the last move; returns how many moved."""
        moved = 0
        for name, (d, cb, idx) in self.codes.items():
            par = self._linear(name).parametrizations.weight
            m = par[0].log_m.exp()
            cbw = cb.repeat_interleave(pack.QK, 1)                                   # (rows, cols, K)
            delta = (d * m).repeat_interleave(pack.QK, 1).unsqueeze(-1) * (cbw - cbw.gather(2, idx.long().unsqueeze(-1)))
            if self.exact:
                h = self.fisher[name].unsqueeze(-1)
            else:
                h = torch.outer(self.a[name], self.in_sq[name] / self.tokens).unsqueeze(-1)
            best, k = move_scores((self.grad[name] / self.steps).unsqueeze(-1), h, delta, "proximal", self.rho).min(-1)
            take = best < 0
            limit = int(self.frac * best.numel())
            if int(take.sum()) > limit:
                take = torch.zeros(take.numel(), dtype=torch.bool).index_fill_(
                    0, best.view(-1).topk(limit, largest=False).indices, True).view_as(take)
            idx[take] = k[take].to(idx.dtype)
            par.original[take] = (d.repeat_interleave(pack.QK, 1) * cbw.gather(2, k.unsqueeze(-1)).squeeze(-1))[take]
            moved += int(take.sum())
            qtype, _ = self.quantized[name]     # distill.distill re-scales the blocks it finds here
            self.quantized[name] = (qtype, pack.pack(qtype, d.reshape(-1).numpy().astype(np.float16),
                                                     cb.reshape(-1, qtype.n_codes).numpy().astype(np.int8),
                                                     idx.reshape(-1, pack.QK).numpy()))
        self.reset()
        self.moved += moved
        return moved

    def close(self):
        for h in self.hooks:
            h.remove()


def _add(acc, x):
    acc.add_(x)     # a tensor hook that returns None leaves the gradient as it was


def parse_run(spec: str) -> dict:
    return dv.parse_spec(spec, {"moves": 0, "rho": 0.5, "frac": 0.001, "start": 0, "exact": 0})


def quantized_model(state: dict):
    """dv.quantized_model with no weight gradients: the moves' passes want only activation gradients."""
    model = dv.quantized_model(state)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def moves_run(state: dict, run: dict, fisher_seqs: int = 4) -> tuple[dict, dict, list[float], int, float]:
    """Distil from the cached state with moves; returns (weights, norms, loss history, indices moved, seconds)."""
    model = quantized_model(state)
    quantized = dict(state["quantized"])
    tokens, hidden = state["tokens"], state["float_hidden"]
    t0 = time.time()
    moves = None
    if run["moves"]:
        moves = IndexMoves(model, quantized, run["rho"], run["frac"], bool(run["exact"]))
        moves.measure_fisher(tokens[:fisher_seqs])     # step() runs inside distill, under its parametrization

    def after_step(model, k):
        if k <= run["start"]:
            moves.reset()
            return
        moves.observe(tokens.shape[1])
        if (k - run["start"]) % run["moves"] == 0:
            moves.step()

    _, norms, history = distill.distill(model, quantized, tokens, hidden, distill.DistillSettings(),
                                        after_step=after_step if moves else None)
    seconds = time.time() - t0
    if moves:
        moves.close()
    weights = {n: model.get_submodule(n.removesuffix(".weight")).weight.detach().clone() for n in quantized}
    return weights, norms, history, moves.moved if moves else 0, seconds


def probe(state: dict, rhos=(0.5, 512, 2048, 8192, 32768), frac: float = 0.001, exact: bool = False) -> list[dict]:
    """One move from the layer-wise codes (no distillation) for each rho; KL on a window the gradient did not see."""
    model = quantized_model(state)
    teacher_norm = model.model.norm
    tokens, hidden = state["tokens"], state["float_hidden"]
    for name in state["quantized"]:
        lin = model.get_submodule(name.removesuffix(".weight"))
        parametrize.register_parametrization(lin, "weight", distill.BlockScale(*lin.weight.shape))
    moves = IndexMoves(model, dict(state["quantized"]), 0.5, frac, exact)
    moves.measure_fisher(tokens[:4])

    def kl(b):
        return distill.head_kl(model, teacher_norm, model.model(tokens[b:b + 1]).last_hidden_state, hidden[b:b + 1])

    with torch.enable_grad():
        for b in (0, 1):
            kl(b).backward()        # (no parameter needs grad: only the hooks' sums are wanted)
            moves.observe(tokens.shape[1])
    grad = {k: v.clone() for k, v in moves.grad.items()}
    in_sq = {k: v.clone() for k, v in moves.in_sq.items()}
    idx0 = {k: c[2].clone() for k, c in moves.codes.items()}
    w0 = {k: moves._linear(k).parametrizations.weight.original.clone() for k in moves.codes}
    with torch.no_grad():
        base = kl(5).item()
    rows = []
    for rho in rhos:
        moves.rho = rho
        for k in grad:
            moves.grad[k].copy_(grad[k])
            moves.in_sq[k].copy_(in_sq[k])
        moves.steps, moves.tokens = 2, 2 * tokens.shape[1]
        n = moves.step()
        with torch.no_grad():
            after = kl(5).item()
        rows.append({"rho": rho, "frac": frac, "fisher": "exact" if exact else "kfac", "moved": n, "kl_window5_before": base, "kl_window5_after": after})
        print(rows[-1], flush=True)
        for k in moves.codes:
            moves.codes[k][2].copy_(idx0[k])
            moves._linear(k).parametrizations.weight.original.data.copy_(w0[k])
    moves.close()
    return rows


def main() -> int:
    p = dv.variant_parser(__doc__, "moves=0;moves=4,rho=8192;moves=4,rho=32768", RESULTS / "index_moves.json")
    p.add_argument("--probe", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(2)

    qtype = pack.TYPES[args.type]
    state = dv.layerwise_state(qtype, args.calib_seqs)
    header = {"what": __doc__.split("\n")[0], "model": assets.MODEL_NAME, "machine": scoreboard.machine_info(),
              "commands": ["python bench/index_moves.py " + shlex.join(sys.argv[1:])]}
    if args.probe:
        header["probe"] = probe(state) + probe(state, exact=True)
    data, ref = qbench.eval_setup(args.chunks)
    header["eval"] = {"text": data.text, "ctx": 512, "chunks": args.chunks}
    for spec in args.runs.split(";"):
        run = parse_run(spec)
        weights, norms, history, moved, seconds = moves_run(state, run)
        row = {"name": f"{args.type} {spec}", "type": args.type, "calib_seqs": args.calib_seqs, **run,
               "indices_moved": moved, "distill_kl": history, "distill_seconds": round(seconds, 1),
               **evaluate.evaluate(qbench.rest_model({**weights, **norms}), data, ref)}
        print(row, flush=True)
        scoreboard.merge_rows(args.out, header, [row])
    return 0


if __name__ == "__main__":
    sys.exit(main())
