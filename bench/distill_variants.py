#!/usr/bin/env python3
"""Variants of the end-to-end distillation (step 8 of docs/METHOD.md) on one layer-wise result.

    python bench/distill_variants.py [--type JLCM2] [--calib-seqs 64] [--runs "lr=3e-3;lr=1e-3;bias=0.1"]

The layer-wise stage of the default settings runs once (every linear in --type,
the calibration of bench/quantizer.py) and its codes, calibration tokens and
the float model's final hidden states are cached; each run then distils from
that same start and is evaluated exactly as bench/quantizer.py's JLCM rows are
(IQ4_NL file for the embeddings, torch evaluation on Pride and Prejudice, ctx
512 x 60 chunks, KLD against float). With the defaults (lr=3e-3, no biases) a
run reproduces the quantizer.json row of the type, up to the sweeps and
calibration the row records.

A run is `key=value,...`:
  lr=X     the distillation's peak learning rate (default DistillSettings.lr)
  bias=S   a bias per output row on every JLCM linear, starting at 0, fitted with
           the rest at S times the learning rate. llama.cpp's llama graph adds
           such biases when a file has them (32 bits per row: +0.04 bpw here).
  seqs=N   distil on N calibration sequences instead of the cached ones: the
           windows quantize_model would draw for N (a superset of the cached
           ones, same seed), the float model's final hidden states computed for
           them here. The layer-wise stage still saw only --calib-seqs.
  epochs=E passes over the windows (default 1): 64 windows x 2 epochs take as
           many steps as seqs=128, so the two separate text from steps.
  len=L    cut every window into 512/L windows of L tokens, each a step of its own (the float
           model's hidden states computed again for them, on the shorter context): as many
           tokens, 512/L times the steps, each about L/512 of the time.
  bf16=B   the distillation's matmuls in bfloat16 (1) or float32 (0); without it, bfloat16 where the
           CPU has it (DistillSettings.bf16, distill.native_bf16).
  hidden=λ add λ times the hidden-state error to the KL: every decoder layer's output against the
           float model's on the same tokens (run alongside, without gradients), as the squared error
           over the float output's mean square per token, averaged over tokens and layers.

Results: bench/results/distill_variants.json. A row names the machine it ran on
(", Intel Xeon"): the layer-wise codes differ between CPUs by float rounding, so
only rows of one machine share a start. Rows without it ran on an AMD EPYC.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from jlcm_gguf import assets, cache, calibrate, distill, evaluate, pack, quantize, scoreboard
from jlcm_gguf.learn import Settings

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quantizer as qbench  # noqa: E402  (the JLCM rows' evaluation, reused)

RESULTS = Path(__file__).resolve().parent / "results"


def layerwise_state(qtype: pack.JLCMType, n_seqs: int) -> dict:
    """quantize_model's state just before its distillation: the codes, the tokens, the float hidden states."""
    path = cache.cache_dir() / "bench" / "distill_variants" / f"{qtype.name}-{n_seqs}.pt"
    if path.exists():
        return torch.load(path, weights_only=False)
    caught = {}

    def grab(model, quantized, tokens, float_hidden, settings, quiet):
        caught.update(quantized=quantized, tokens=tokens, float_hidden=float_hidden)
        raise _Caught

    calib = assets.joined_text(assets.CALIBRATION_NOVELS).read_text(encoding="utf-8")
    plan = quantize.Plan(lambda i, n: qtype, Settings(), distill.DistillSettings(seqs=0))   # the calibration's windows
    real, quantize.distill = quantize.distill, grab
    try:
        quantize.quantize_model(assets.hf_model_dir(), calib, plan, n_seqs=n_seqs, seed=0)
    except _Caught:
        pass
    finally:
        quantize.distill = real
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.atomic_path(path)
    torch.save(caught, tmp)
    cache.commit_file(tmp, path)
    return caught


class _Caught(Exception):
    pass


def parse_spec(spec: str, defaults: dict) -> dict:
    """'key=value,...' over `defaults` (its keys are the known ones); values are floats."""
    run = dict(defaults)
    for item in filter(None, spec.split(",")):
        key, _, value = item.partition("=")
        if key not in run:
            raise SystemExit(f"--runs: unknown key {key!r} in {spec!r} (known: {', '.join(run)})")
        run[key] = float(value)
    return run


def variant_parser(doc: str, runs: str, out: Path) -> argparse.ArgumentParser:
    """The options every variant script shares: the type, its layer-wise start, the runs, the evaluation."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--type", default="JLCM2", choices=sorted(pack.TYPES))
    p.add_argument("--calib-seqs", type=int, default=64)
    p.add_argument("--runs", default=runs)
    p.add_argument("--chunks", type=int, default=60)
    p.add_argument("--out", type=Path, default=out)
    return p


def parse_run(spec: str) -> dict:
    return parse_spec(spec, {"lr": distill.DistillSettings.lr, "bias": None, "seqs": None, "epochs": None, "bf16": None,
                             "len": None, "hidden": None})


def quantized_model(state: dict):
    """The float model with the cached state's JLCM linears in their dequantized weights."""
    model = quantize._float_model(assets.hf_model_dir(), "cpu")
    with torch.no_grad():
        for name, (qtype, blocks) in state["quantized"].items():
            w = model.get_submodule(name.removesuffix(".weight")).weight
            w.copy_(torch.from_numpy(pack.dequantize(qtype, blocks)).view_as(w))
    return model


def more_windows(state: dict, n_seqs: int) -> torch.Tensor:
    """The tokens of n_seqs calibration windows, the cached ones among them."""
    from transformers import AutoTokenizer
    calib = assets.joined_text(assets.CALIBRATION_NOVELS).read_text(encoding="utf-8")
    n_cached = state["tokens"].shape[0]
    tokens, first = calibrate.calibration_windows(AutoTokenizer.from_pretrained(assets.hf_model_dir()), calib,
                                                  n_cached, 512, 0, n_more=max(0, n_seqs - n_cached))
    if not torch.equal(tokens[first], state["tokens"]):
        raise SystemExit("seqs=N: the cached calibration windows are not among the N drawn; was the cache made with another seed?")
    return tokens


def float_hidden(tokens: torch.Tensor) -> torch.Tensor:
    """The float model's final hidden states (before the final norm) for each window of `tokens`."""
    model = quantize._float_model(assets.hf_model_dir(), "cpu")
    caught = []
    hook = model.model.norm.register_forward_hook(lambda mod, args, out: caught.append(args[0].detach()))
    with torch.no_grad():
        for t in tqdm(tokens.split(8), desc="float model on the windows", unit="batch", leave=False):
            model.model(t)
    hook.remove()
    return torch.cat(caught)


def hidden_state_loss(model, weight: float, bf16: bool):
    """extra_loss for distill.distill: weight x the mean over layers and tokens of |h - h_f|^2 / mean(h_f^2),
    h each decoder layer's output in `model` (hooks, kept for backward), h_f the float model's."""
    teacher = quantize._float_model(assets.hf_model_dir(), "cpu").eval()
    student, truth = {}, {}
    for i, (a, b) in enumerate(zip(model.model.layers, teacher.model.layers)):
        a.register_forward_hook(lambda m, args, out, i=i: student.__setitem__(i, out))
        b.register_forward_hook(lambda m, args, out, i=i: truth.__setitem__(i, out.detach()))

    def loss(tokens):
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            teacher.model(tokens)
        terms = [((student[i].float() - t.float()).pow(2).mean(-1) / t.float().pow(2).mean(-1)).mean()
                 for i, t in truth.items()]
        return weight * torch.stack(terms).mean()
    return loss


def machine_tag(cpu: str) -> str:
    """'Intel(R) Xeon(R) Processor' -> 'Intel Xeon': the layer-wise codes differ between CPUs (float rounding), so
    rows from different machines are different starts and carry the machine in their name."""
    return " ".join(w for w in cpu.replace("(R)", "").split() if w != "Processor")


def distil_run(state: dict, run: dict) -> tuple[dict, dict, dict, list[float], float]:
    """Distil from the cached state; returns (weights, norms, biases by HF name, loss history, seconds)."""
    model = quantized_model(state)
    biases = {}
    if run["bias"] is not None:
        for name in state["quantized"]:
            lin = model.get_submodule(name.removesuffix(".weight"))
            lin.bias = torch.nn.Parameter(torch.zeros(lin.out_features))
            biases[name.removesuffix("weight") + "bias"] = lin.bias
    extra = ({"params": list(biases.values()), "lr": run["lr"] * run["bias"]},) if biases else ()
    tokens, hidden = state["tokens"], state["float_hidden"]
    if run["seqs"] is not None:
        tokens = more_windows(state, int(run["seqs"]))
    if run["len"] is not None:
        tokens = tokens.reshape(-1, int(run["len"]))
    if tokens is not state["tokens"]:
        hidden = float_hidden(tokens)
    settings = distill.DistillSettings(lr=run["lr"], epochs=int(run["epochs"] or 1),
                                       bf16=None if run["bf16"] is None else bool(run["bf16"]))
    extra_loss = None if run["hidden"] is None else hidden_state_loss(model, run["hidden"], settings.uses_bf16("cpu"))
    t0 = time.time()
    _, norms, history = distill.distill(model, state["quantized"], tokens, hidden, settings, extra=extra,
                                        extra_loss=extra_loss)
    seconds = time.time() - t0
    weights = {n: model.get_submodule(n.removesuffix(".weight")).weight.detach().clone() for n in state["quantized"]}
    return weights, norms, {n: b.detach().clone() for n, b in biases.items()}, history, seconds


def plot_windows(doc: dict, out: Path) -> None:
    """KLD against the number of distillation windows, one line per type and machine: the rows at the default
    learning rate without biases (the `seqs` runs and their start)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def tag(r: dict) -> str:
        return machine_tag(r.get("cpu", "AMD EPYC"))   # rows from before rows named their machine

    lines: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for r in doc["rows"]:
        if (r.get("bias") is None and r["lr"] == distill.DistillSettings.lr and not r.get("epochs") and not r.get("len")
                and not r.get("hidden")):
            lines.setdefault((r["type"], tag(r)), []).append((int(r.get("seqs") or r["calib_seqs"]), r["kld"]))
    fig, ax = plt.subplots(figsize=(6.5, 4.5), dpi=120)
    for (qtype, machine), points in sorted(lines.items()):
        points.sort()
        ax.plot(*zip(*points), marker="o", label=f"{qtype}, layer-wise on {machine}")
        for n, kld in points:
            ax.annotate(f"{kld:.3f}", (n, kld), textcoords="offset points", xytext=(4, 4), fontsize=8)
    for r in doc["rows"]:
        if r.get("epochs") and r.get("bias") is None:
            n = int(r.get("seqs") or r["calib_seqs"])
            ax.scatter([n * r["epochs"]], [r["kld"]], marker="D", facecolors="none", edgecolors="black", zorder=3,
                       label=f"{n} windows x {int(r['epochs'])} epochs ({tag(r)}), "
                             f"at its step count")
    for r in doc["rows"]:
        if r.get("len"):
            n = int(r.get("seqs") or r["calib_seqs"])
            ax.scatter([n], [r["kld"]], marker="s", facecolors="none", edgecolors="tab:red", zorder=3)
            ax.annotate(f"{n} x 512 tokens as {int(r['len'])}-token windows: {r['kld']:.3f}", (n, r["kld"]),
                        textcoords="offset points", xytext=(10, -10 if r["len"] >= 256 else 0), fontsize=7)
    stock = {r["name"]: r["kld"] for r in json.loads((RESULTS / "quantizer.json").read_text())["rows"]}
    for name, style in (("IQ2_XS", ":"), ("Q4_0", "--")):      # the files JLCM2 and JLCM3 are to beat
        ax.axhline(stock[name], color="tab:gray", linestyle=style, label=f"stock {name} file ({stock[name]:.3f})")
    ax.set_xscale("log", base=2)
    ax.set_xticks([64, 128, 256, 512, 1024], ["64", "128", "256", "512", "1024"])
    ax.set_xlabel("distillation windows of 512 tokens, one step each (default 128; 64 until 2026-12-07)")
    ax.set_ylabel(f"KLD vs float on {doc['eval']['text']}")
    ax.set_title("End-to-end distillation: more text")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = cache.atomic_path(out)
    fig.savefig(tmp, format="png")
    plt.close(fig)
    cache.commit_file(tmp, out)


def main() -> int:
    p = variant_parser(__doc__, "lr=3e-3;lr=1e-3;lr=1e-2;bias=1;bias=0.1", RESULTS / "distill_variants.json")
    args = p.parse_args()
    torch.set_num_threads(2)

    qtype = pack.TYPES[args.type]
    data, ref = qbench.eval_setup(args.chunks)
    state = layerwise_state(qtype, args.calib_seqs)
    header = {"what": __doc__.split("\n")[0], "model": assets.MODEL_NAME, "machine": scoreboard.machine_info(),
              "eval": {"text": data.text, "ctx": 512, "chunks": args.chunks},
              "commands": ["python bench/distill_variants.py " + shlex.join(sys.argv[1:])]}
    for spec in args.runs.split(";"):
        run = parse_run(spec)
        weights, norms, biases, history, seconds = distil_run(state, run)
        m = qbench.rest_model({**weights, **norms})
        for k, b in biases.items():
            m.get_submodule(k.removesuffix(".bias")).bias = torch.nn.Parameter(b)
        cpu = header["machine"]["cpu"]
        row = {"name": f"{args.type} {spec}, {machine_tag(cpu)}", "type": args.type, "calib_seqs": args.calib_seqs,
               **run, "cpu": cpu,
               "distill_kl": history, "distill_seconds": round(seconds, 1), **evaluate.evaluate(m, data, ref)}
        print(row, flush=True)
        plot_windows(scoreboard.merge_rows(args.out, header, [row]), args.out.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
