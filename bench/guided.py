#!/usr/bin/env python3
"""Layer-wise objectives weighted by the end loss: each token's input to a linear counts by how much
the float model's next-token loss depends on that linear's output at that token.

    python bench/guided.py [--type JLCM2] [--runs "mix=0.5,from=256;mix=1,from=256"]

The plain layer-wise loss weighs every calibration token alike: H = X^T X / n.
Here, as GuidedQuant does with one group of output rows, each linear gets its own

    H = sum_t w_t x_t x_t^T / n,   w_t = (1 - mix) + mix * e_t / mean(e),   e_t = |dL/dy_t|^2

with y_t the linear's output at token t and L the float model's cross-entropy on
the calibration sequences' positions from `from` on (the evaluation scores the
second half of each 512-token window; a window's first tokens, with no context,
would otherwise hold most of the gradient). q, k and v (gate and up) share an
input but not their output gradients, so each gets its own H. Everything else is
the default quantization of bench/quantizer.py's JLCM rows (64 calibration
sequences, sweeps, distillation), evaluated the same way; compare with that
file's row of the same type.

Results: bench/results/guided.json.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch

from jlcm_gguf import assets, calibrate, distill, evaluate, pack, quantize, scoreboard
from jlcm_gguf.learn import Settings

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quantizer as qbench  # noqa: E402  (the JLCM rows' evaluation, reused)

RESULTS = Path(__file__).resolve().parent / "results"


def output_energy(hf: Path, tokens: torch.Tensor, score_from: int) -> dict[tuple[int, str], torch.Tensor]:
    """e_t = |dL/dy_t|^2 for every linear (layer index, HF name), tokens in sequence-major order."""
    model = quantize._float_model(hf, "cpu")
    for p in model.parameters():
        p.requires_grad_(False)     # gradients of activations only: no weight gradient is ever formed
    energy: dict[tuple[int, str], list] = {}
    hooks = [layer.get_submodule(name).register_full_backward_hook(
                 lambda _m, _gi, go, key=(i, name): energy.setdefault(key, []).append(go[0].pow(2).sum(-1).flatten()))
             for i, layer in enumerate(model.model.layers) for name in calibrate.LINEARS]
    for seq in tokens.split(1):
        x = model.model.embed_tokens(seq).requires_grad_(True)      # so the graph reaches every linear
        h = model.model(inputs_embeds=x).last_hidden_state[0, score_from - 1:-1]
        logits = model.lm_head(h)                                   # the scored positions only
        torch.nn.functional.cross_entropy(logits.float(), seq[0, score_from:], reduction="sum").backward()
    for h in hooks:
        h.remove()
    # backward visits the sequences in order, so the parts concatenate in token order
    return {key: torch.cat(parts) for key, parts in energy.items()}


def weighted_hessians(weights: dict[tuple[int, str], torch.Tensor]):
    """calibrate.collect_hessians with each linear's tokens weighted by weights[(layer, name)]."""
    def collect(stream, layer, hidden, gram=False):
        i = layer.self_attn.layer_idx
        acc = {name: calibrate._Moments() for name in calibrate.LINEARS}
        seen = {src: 0 for src in calibrate.SHARED_INPUTS}

        def on_input(src, x):
            x = x.reshape(-1, x.shape[-1])
            a, seen[src] = seen[src], seen[src] + x.shape[0]
            for name in calibrate.SHARED_INPUTS[src]:
                acc[name].add(x * weights[(i, name)][a:seen[src]].sqrt().unsqueeze(1))

        calibrate._run_hooked(stream, layer, hidden, calibrate.SHARED_INPUTS, on_input)
        out = {name: m.gram(factored=gram) for name, m in acc.items()}
        return out if gram else {k: g.full() for k, g in out.items()}
    return collect


def parse_run(spec: str) -> dict:
    run = {"mix": 0.5, "from": 256}
    for item in filter(None, spec.split(",")):
        key, _, value = item.partition("=")
        if key not in run:
            raise SystemExit(f"--runs: unknown key {key!r} in {spec!r} (known: mix, from)")
        run[key] = float(value) if key == "mix" else int(value)
    return run


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--type", default="JLCM2", choices=sorted(pack.TYPES))
    p.add_argument("--calib-seqs", type=int, default=64)
    p.add_argument("--runs", default="mix=0.5,from=256")
    p.add_argument("--chunks", type=int, default=60)
    p.add_argument("--out", type=Path, default=RESULTS / "guided.json")
    args = p.parse_args()
    torch.set_num_threads(2)
    from transformers import AutoTokenizer

    hf = assets.hf_model_dir()
    tok = AutoTokenizer.from_pretrained(hf)
    data = evaluate.eval_data(tok, assets.text_file(assets.EVAL_TEXT), 512, args.chunks)
    ref = evaluate.reference(quantize._float_model(hf, "cpu"), data, "hf-float32")
    calib = assets.joined_text(assets.CALIBRATION_NOVELS).read_text(encoding="utf-8")
    tokens = calibrate.calibration_tokens(tok, calib, args.calib_seqs, 512, Settings().seed)
    qtype = pack.TYPES[args.type]
    header = {"what": __doc__.split("\n")[0], "model": assets.MODEL_NAME, "machine": scoreboard.machine_info(),
              "eval": {"text": data.text, "ctx": 512, "chunks": args.chunks},
              "baseline": f"bench/results/quantizer.json, row {args.type} (the same run with plain H)",
              "commands": ["python bench/guided.py " + shlex.join(sys.argv[1:])]}
    plain = quantize.collect_hessians
    energies = {}
    for spec in args.runs.split(";"):
        run = parse_run(spec)
        t0 = time.time()
        if run["from"] not in energies:
            energies[run["from"]] = output_energy(hf, tokens, run["from"])
        energy_seconds = time.time() - t0
        weights = {k: (1 - run["mix"]) + run["mix"] * e / e.mean() for k, e in energies[run["from"]].items()}
        quantize.collect_hessians = weighted_hessians(weights)
        try:
            t1 = time.time()
            q = quantize.quantize_model(hf, calib, quantize.Plan(lambda i, n: qtype, Settings(), distill.DistillSettings()),
                                        n_seqs=args.calib_seqs, seed=Settings().seed)
            seconds = time.time() - t1
        finally:
            quantize.collect_hessians = plain
        m = qbench.load_gguf_model(qbench.stock_file(qbench.REST))
        sd = m.state_dict()
        for k, v in {**{k: r.weight for k, r in q.linears.items()}, **q.norms}.items():
            sd[k].copy_(v)
        row = {"name": f"{args.type} {spec}", "type": args.type, "calib_seqs": args.calib_seqs, **run,
               "energy_seconds": round(energy_seconds, 1), "quantize_seconds": round(seconds, 1),
               "stages": q.seconds, "distill_kl": q.distill_history, **evaluate.evaluate(m, data, ref)}
        print(row, flush=True)
        scoreboard.merge_rows(args.out, header, [row])
    return 0


if __name__ == "__main__":
    sys.exit(main())
