"""`jlcm-gguf convert`: an HF model (or a GGUF of one) in, a JLCM GGUF out.

Order of work, so that bad input fails before anything slow runs: resolve the
model (a GGUF is dequantized into a cached HF directory), check architecture,
weights (readable, finite) and calibration text, choose every tensor's type,
then write the pinned converter's reference file, quantize, and write the
result (temporary file in the target directory, fsync, rename).
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import assets, cache, gguf_write, learn, pack, policy
from .calibrate import WeightStore
from .distill import DistillSettings
from .learn import Settings

# HF architectures the pinned llama.cpp converter writes as llama-family models that this quantizer's
# layer stream (q/k/v/o, gate/up/down, RMSNorm) covers
SUPPORTED_ARCHITECTURES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2"}


class ConvertError(RuntimeError):
    """A problem with the input or the options; the message names it and the flag that fixes it."""


@dataclass
class Options:
    qtype: str = "JLCM2"
    target_bpw: float | None = None                                     # whole file, every byte counted
    tensor_types: list[tuple[str, str]] = field(default_factory=list)   # (regex on GGUF names, type)
    token_embedding_type: str = "Q8_0"
    output_tensor_type: str = "Q8_0"
    calib: list[Path] = field(default_factory=list)                    # default: the calibration novels
    calib_tokens: int = 64 * 512
    calib_len: int = 512
    seed: int = 0
    outer_steps: int = Settings.outer_steps
    sweeps: int = Settings.sweeps
    guide: float = Settings.guide
    n_groups: int | None = Settings.n_groups     # None: each type's default (learn.DEFAULT_GROUPS)
    distill_epochs: int = DistillSettings.epochs
    distill_seqs: int | None = None     # None: DistillSettings.seqs, or as many windows as the text holds
    distill_bf16: bool | None = DistillSettings.bf16     # None: bfloat16 where the device has it (distill.native_bf16)
    device: str = "cpu"
    quiet: bool = False


@dataclass
class Row:
    name: str          # GGUF tensor name
    type_name: str
    n_elements: int
    n_bytes: int


# -- input ------------------------------------------------------------------------------------------

def resolve_model(model: Path, quiet: bool = False) -> Path:
    """An HF directory for MODEL: the directory itself, or a GGUF dequantized into the cache."""
    model = Path(model)
    if model.is_dir():
        return model
    if not model.exists():
        raise ConvertError(f"{model}: no such file or directory (MODEL is an HF directory or a GGUF file)")
    with open(model, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ConvertError(f"{model}: not a GGUF file and not an HF directory")
    digest = hashlib.sha256(f"{model.resolve()}:{model.stat().st_size}:{model.stat().st_mtime_ns}".encode()).hexdigest()[:16]
    dest = cache.cache_dir() / "models" / f"{model.stem}-{digest}-hf"
    with cache.locked(dest.name):
        if not (dest / "config.json").exists():
            if not quiet:
                print(f"dequantizing {model.name} into an HF directory (transformers)")
            tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
            try:
                assets._gguf_to_hf(model, tmp)
                cache.commit_dir(tmp, dest)
            except Exception as e:
                raise ConvertError(f"{model}: cannot read it as a model ({str(e).splitlines()[0]})") from e
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return dest


def check_model(hf_dir: Path) -> dict:
    """The model's config, after checking architecture and that every weight reads and is finite."""
    cfg_path = hf_dir / "config.json"
    if not cfg_path.exists():
        raise ConvertError(f"{hf_dir}: no config.json (MODEL is an HF directory with config, safetensors, tokenizer)")
    try:
        config = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise ConvertError(f"{cfg_path}: not valid JSON ({e})") from e
    archs = config.get("architectures") or ["(none)"]
    if archs[0] not in SUPPORTED_ARCHITECTURES:
        raise ConvertError(f"{hf_dir}: architecture {archs[0]} is not supported "
                           f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})")
    try:
        store = WeightStore(hf_dir)
    except FileNotFoundError as e:
        raise ConvertError(f"{hf_dir}: no model.safetensors or model.safetensors.index.json") from e
    except Exception as e:
        raise ConvertError(f"{hf_dir}: cannot read the safetensors files ({str(e).splitlines()[0]})") from e
    for name in store.where:
        try:
            t = store.get(name)
        except Exception as e:
            raise ConvertError(f"{hf_dir}: tensor {name} cannot be read ({str(e).splitlines()[0]}); "
                               "the safetensors file is corrupt or truncated") from e
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise ConvertError(f"{hf_dir}: tensor {name} holds NaN or Inf values; fix the checkpoint")
    return config


def calibration_text(opts: Options, tokenizer) -> tuple[str, int]:
    """The calibration text and its length in tokens."""
    paths = opts.calib or [assets.text_file(n) for n in assets.CALIBRATION_NOVELS]
    parts = []
    for p in paths:
        p = Path(p)
        if not p.is_file():
            raise ConvertError(f"{p}: no such calibration file (--calib)")
        parts.append(p.read_text(encoding="utf-8", errors="replace"))
    text = "".join(parts)
    have = len(tokenizer(text, add_special_tokens=False).input_ids) if text.strip() else 0
    if have < opts.calib_tokens:
        raise ConvertError(f"calibration text has {have} tokens, fewer than --calib-tokens {opts.calib_tokens}; "
                           "give more text with --calib or lower --calib-tokens")
    if opts.distill_epochs and opts.distill_seqs is not None and have < opts.distill_seqs * opts.calib_len:
        raise ConvertError(f"calibration text has {have} tokens, fewer than --distill-seqs {opts.distill_seqs} x "
                           f"--calib-len {opts.calib_len}; give more text with --calib or lower --distill-seqs")
    return text, have


def distill_seqs(opts: Options, text_tokens: int) -> int:
    """--distill-seqs as given, or by default DistillSettings.seqs windows where the text holds them (never
    fewer than the calibration's)."""
    if opts.distill_seqs is not None:
        return opts.distill_seqs
    return max(opts.calib_tokens // opts.calib_len, min(DistillSettings.seqs, text_tokens // opts.calib_len))


# -- the whole conversion ---------------------------------------------------------------------------

def reference_gguf(hf_dir: Path, quiet: bool) -> Path:
    """The pinned converter's F16 file for this HF directory (cached, keyed by its files' contents)."""
    if hf_dir.resolve() == (cache.cache_dir() / "models" / f"{assets.MODEL_NAME}-hf").resolve():
        return assets.f16_reference()      # the default model's, already made by the pinned converter
    h = hashlib.sha256()
    for p in sorted(hf_dir.iterdir()):
        if p.is_file():
            h.update(p.name.encode())
            h.update(cache.sha256_file(p).encode())
    dest = cache.cache_dir() / "models" / f"reference-{h.hexdigest()[:16]}-F16.gguf"
    with cache.locked(dest.name):
        if not dest.exists():
            if not quiet:
                print("writing the reference GGUF with llama.cpp's convert_hf_to_gguf.py")
            assets.convert_hf_to_gguf(hf_dir, dest, "f16")
    return dest


def convert(model: Path, out: Path, opts: Options) -> tuple[list[Row], list[str]]:
    from transformers import AutoTokenizer
    from .quantize import Plan, quantize_model

    out = Path(out)
    if not out.parent.is_dir():
        raise ConvertError(f"{out.parent}: output directory does not exist (-o)")
    try:
        opts.qtype = policy.check_type(opts.qtype, "--type")
        opts.token_embedding_type = policy.check_type(opts.token_embedding_type, "--token-embedding-type")
        opts.output_tensor_type = policy.check_type(opts.output_tensor_type, "--output-tensor-type")
        opts.tensor_types = [(p, policy.check_type(t, "--tensor-type")) for p, t in opts.tensor_types]
    except policy.PolicyError as e:
        raise ConvertError(str(e)) from e
    for p, _ in opts.tensor_types:
        try:
            re.compile(p)
        except re.error as e:
            raise ConvertError(f"--tensor-type: bad pattern {p!r} ({e})") from e
    if opts.n_groups is not None and opts.n_groups < 0:
        raise ConvertError(f"--groups {opts.n_groups}: give a number of row groups, or 0 for a group per row")
    if opts.calib_tokens < opts.calib_len:
        raise ConvertError(f"--calib-tokens {opts.calib_tokens} is less than one {opts.calib_len}-token sequence")
    if not 0 <= opts.guide <= 1:
        raise ConvertError(f"--guide {opts.guide}: give a mix between 0 (off) and 1 (the gradient weights alone)")
    if opts.distill_seqs and opts.distill_seqs * opts.calib_len < opts.calib_tokens:   # None: chosen below
        raise ConvertError(f"--distill-seqs {opts.distill_seqs} is fewer than the calibration's "
                           f"{opts.calib_tokens // opts.calib_len} sequences, which the distillation always uses; "
                           "give more, or 0 for those alone")

    hf_dir = resolve_model(model, opts.quiet)
    config = check_model(hf_dir)
    arch = SUPPORTED_ARCHITECTURES[config["architectures"][0]]
    for flag, t in (("--token-embedding-type", opts.token_embedding_type), ("--output-tensor-type", opts.output_tensor_type)):
        if t in pack.TYPES and config["hidden_size"] % pack.QK:
            raise ConvertError(f"{flag} {t}: the model's rows are {config['hidden_size']} wide, not a multiple of "
                               f"{pack.QK}; choose a stock type such as Q8_0")
    tok = AutoTokenizer.from_pretrained(hf_dir)
    text, text_tokens = calibration_text(opts, tok)
    reference = reference_gguf(hf_dir, opts.quiet)
    types = choose_types(opts, config, reference)
    check_space(out, reference, config, types, opts)

    jlcm = {n: pack.TYPES[t] for n, t in types.items() if t in pack.TYPES}
    plan = Plan(lambda i, lin: jlcm.get(f"model.layers.{i}.{lin}.weight"),
                Settings(outer_steps=opts.outer_steps, sweeps=opts.sweeps, n_groups=opts.n_groups,
                         guide=opts.guide, seed=opts.seed),
                DistillSettings(epochs=opts.distill_epochs, seqs=distill_seqs(opts, text_tokens), bf16=opts.distill_bf16),
                held=lambda name, w: torch.from_numpy(gguf_write.stock_values(types[name], w.float().cpu().numpy())))
    q = quantize_model(hf_dir, text, plan, n_seqs=opts.calib_tokens // opts.calib_len, seq_len=opts.calib_len,
                       seed=opts.seed, device=opts.device, quiet=opts.quiet)

    store = WeightStore(hf_dir)
    replace: dict[str, gguf_write.Tensor] = {}
    for L in policy.linears(config):
        order = _row_order(L, config, arch)
        if L.hf_name in q.linears:
            r = q.linears[L.hf_name]
            replace[L.gguf_name] = gguf_write.jlcm_tensor(r.qtype, r.blocks, L.rows, L.cols, order)
        else:
            w = store.get(L.hf_name).float().numpy()
            replace[L.gguf_name] = gguf_write.stock_tensor(types[L.hf_name], w if order is None else w[order])
    for hf, value in q.norms.items():
        replace[gguf_write.gguf_name(hf)] = gguf_write.stock_tensor("F32", value.cpu().numpy())
    embed = store.get("model.embed_tokens.weight").float().numpy()
    replace["token_embd.weight"] = gguf_write.data_free_tensor(opts.token_embedding_type, embed)
    if store.has("lm_head.weight") and not config.get("tie_word_embeddings", False):
        replace["output.weight"] = gguf_write.data_free_tensor(opts.output_tensor_type,
                                                           store.get("lm_head.weight").float().numpy())
    metadata = {
        "jlcm.format_version": gguf_write.FORMAT_VERSION,
        "jlcm.types": sorted({t for t in types.values()}),
        "jlcm.method": "grouped codebooks, error feedback in act order + proximal index updates, layer-wise "
                       "output loss; block scales and norms distilled against the float model",
        "jlcm.outer_steps": plan.settings.outer_steps,
        "jlcm.sweeps": plan.settings.sweeps,
        "jlcm.guide": plan.settings.guide,
        "jlcm.distill_epochs": plan.distill.epochs,
        "jlcm.distill_seqs": max(plan.distill.seqs, opts.calib_tokens // opts.calib_len) if plan.distill.epochs else 0,
        "jlcm.distill_dtype": "bfloat16" if plan.distill.uses_bf16(opts.device) else "float32",
        "jlcm.seed": opts.seed,
        "jlcm.calibration.files": [Path(p).name for p in opts.calib] or list(assets.CALIBRATION_NOVELS),
        "jlcm.calibration.tokens": (opts.calib_tokens // opts.calib_len) * opts.calib_len,
        "jlcm.calibration.sha256": hashlib.sha256(text.encode()).hexdigest(),
        # row groups per linear, per JLCM type (0: a group per row)
        **{f"jlcm.n_groups.{t.name}": learn.n_groups_for(t, plan.settings)
           for t in sorted(set(jlcm.values()), key=lambda t: t.name)},
    }
    weight_of = {L.hf_name: L.n for L in policy.linears(config)}
    by_type: dict[str, int] = {}
    for hf, t in types.items():
        by_type[t] = by_type.get(t, 0) + weight_of[hf]
    major = max(by_type, key=by_type.get)
    gguf_write.write(reference, out, replace, metadata, gguf_write.FILE_TYPES.get(major, 1))
    notes = []
    falls = [hf for hf, L in zip(types, policy.linears(config))
             if types[hf] == policy.FALLBACK_TYPE and L.cols % pack.QK]
    if falls:
        notes.append(f"{len(falls)} linears fall back to {policy.FALLBACK_TYPE}: rows not a multiple of "
                     f"{pack.QK} wide (e.g. {falls[0]})")
    notes.append(f"token_embd: {opts.token_embedding_type}"
                 + ("" if "output.weight" in replace else " (tied: it is also the output layer)"))
    return summary_rows(out), notes


def choose_types(opts: Options, config: dict, reference: Path) -> dict[str, str]:
    if opts.target_bpw is None:
        return policy.plan(config, opts.qtype, opts.tensor_types)
    from .gguf_io import open_reader
    tensors = open_reader(reference).tensors
    lin = {L.gguf_name for L in policy.linears(config)}
    fixed = reference.stat().st_size - sum(int(t.n_bytes) for t in tensors if t.name in lin)
    for t in tensors:      # the embedding and output tensors in the types this file will have
        if t.name in ("token_embd.weight", "output.weight"):
            want = opts.token_embedding_type if t.name == "token_embd.weight" else opts.output_tensor_type
            fixed += int(t.n_elements * policy.type_bits(want) / 8) - int(t.n_bytes)
    try:
        return policy.target_mix(config, opts.target_bpw, fixed, sum(int(t.n_elements) for t in tensors),
                                 opts.tensor_types)
    except policy.PolicyError as e:
        raise ConvertError(str(e)) from e


def check_space(out: Path, reference: Path, config: dict, types: dict[str, str], opts: Options) -> None:
    """Refuse before the slow work when the output cannot fit (the write would fail at the end)."""
    new = {L.gguf_name: int(L.n * policy.type_bits(types[L.hf_name]) / 8) for L in policy.linears(config)}
    embed = config["vocab_size"] * config["hidden_size"]
    new["token_embd.weight"] = int(embed * policy.type_bits(opts.token_embedding_type) / 8)
    need = gguf_write.file_size(reference, new)
    free = shutil.disk_usage(out.parent).free
    if free < need:
        raise ConvertError(f"out of disk space: {out} needs about {need / 1e6:.0f} MB, {out.parent} has "
                           f"{free / 1e6:.0f} MB free; free space or choose another -o")


def _row_order(L: policy.Linear, config: dict, arch: str):
    """llama.cpp's converter permutes the rows of llama models' q and k (see gguf_write.qk_row_order)."""
    if arch != "llama" or L.lin not in ("self_attn.q_proj", "self_attn.k_proj"):
        return None
    heads = config["num_attention_heads"]
    if L.lin == "self_attn.k_proj":
        heads = config.get("num_key_value_heads", heads)
    return gguf_write.qk_row_order(L.rows, heads)


# -- reading back -----------------------------------------------------------------------------------

def summary_rows(path: Path) -> list[Row]:
    from .gguf_io import open_reader
    return [Row(t.name, t.tensor_type.name, int(t.n_elements), int(t.n_bytes)) for t in open_reader(path).tensors]


def tensor_class(name: str) -> str:
    """`blk.7.ffn_down.weight` -> `ffn_down`; biases (Qwen2's q/k/v) keep their suffix: `attn_q.bias`."""
    m = re.fullmatch(r"(?:blk\.\d+\.)?(.+?)(\.weight)?", name)
    return m.group(1)


def summary_table(rows: list[Row], file_bytes: int) -> str:
    """Per tensor class and type: tensors, weights, bytes, bpw; whole-file and linear-only bpw."""
    classes: dict[tuple[str, str], list[int]] = {}
    for r in rows:
        c = classes.setdefault((tensor_class(r.name), r.type_name), [0, 0, 0])
        c[0] += 1
        c[1] += r.n_elements
        c[2] += r.n_bytes
    lines = [f"{'tensor class':<16} {'type':<8} {'tensors':>7} {'weights':>12} {'bytes':>12} {'bpw':>7}"]
    for (cls, t), (n, e, b) in sorted(classes.items()):
        lines.append(f"{cls:<16} {t:<8} {n:>7} {e:>12,} {b:>12,} {8 * b / e:>7.3f}")
    total = sum(r.n_elements for r in rows)
    lin = [r for r in rows if tensor_class(r.name) in gguf_write.LINEAR_CLASSES]
    lin_e, lin_b = sum(r.n_elements for r in lin), sum(r.n_bytes for r in lin)
    lines.append(f"linear layers: {lin_e:,} weights, {lin_b:,} bytes, {8 * lin_b / max(lin_e, 1):.3f} bpw")
    lines.append(f"whole file:    {total:,} weights, {file_bytes:,} bytes, {8 * file_bytes / total:.3f} bpw "
                 "(every byte: metadata, tokenizer, embeddings, norms)")
    return "\n".join(lines)


def _dequantize(t) -> np.ndarray:
    import gguf
    shape = tuple(int(x) for x in reversed(t.shape.tolist()))
    if t.tensor_type.name in pack.TYPES:
        return pack.dequantize(pack.TYPES[t.tensor_type.name], np.asarray(t.data)).reshape(shape)
    return gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(shape).astype(np.float32)


def dequantize_tensor(path: Path, name: str) -> np.ndarray:
    """A tensor of a GGUF as float32 (rows, cols): JLCM through the numpy reference, stock types through gguf-py."""
    from .gguf_io import open_reader
    for t in open_reader(path).tensors:
        if t.name == name:
            return _dequantize(t)
    raise KeyError(f"{path}: no tensor {name}")


def dequantize_all(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a GGUF as float32, by name, from one read of the file."""
    from .gguf_io import open_reader
    return {t.name: _dequantize(t) for t in open_reader(path).tensors}


def codebook_stats(path: Path) -> dict[str, dict]:
    """Per JLCM tensor: distinct codebook entries used per block (mean), scale range, entry histogram."""
    from .gguf_io import open_reader
    stats = {}
    for t in open_reader(path).tensors:
        if t.tensor_type.name not in pack.TYPES:
            continue
        d, cb, idx = pack.unpack(pack.TYPES[t.tensor_type.name], np.asarray(t.data))
        used = np.take_along_axis(cb, idx.astype(np.int64), axis=1)
        distinct = np.mean([len(np.unique(u)) for u in used[:: max(1, len(used) // 2048)]])
        df = np.abs(d.astype(np.float32))
        stats[t.name] = {"blocks": len(d), "distinct_levels_per_block": float(distinct),
                         "scale_min": float(df.min()), "scale_max": float(df.max()),
                         "entry_histogram": np.bincount((cb.reshape(-1) + 8).astype(np.int64), minlength=16).tolist()}
    return stats
