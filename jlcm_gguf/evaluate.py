"""Torch evaluation: perplexity and KLD against the float model, on llama-perplexity's token layout.

The text is tokenized once and cut into `chunks` windows of `ctx` tokens; as
llama-perplexity does, only the second half of each window is scored, so every
scored token sees at least ctx/2 tokens of context. The float model's
log-probabilities for the scored tokens are cached (float16) so each
quantized variant costs one forward pass.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import cache


@dataclass
class EvalData:
    tokens: torch.Tensor     # (chunks, ctx)
    text: str                # file name, for the record

    @property
    def first(self) -> int:
        return self.tokens.shape[1] // 2


def eval_data(tokenizer, text_path: Path, ctx: int = 512, chunks: int = 60) -> EvalData:
    text = Path(text_path).read_text(encoding="utf-8")
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids[0]
    if ids.numel() < ctx * chunks:
        raise ValueError(f"{text_path} has {ids.numel()} tokens; --ctx {ctx} x --chunks {chunks} needs {ctx * chunks}")
    return EvalData(ids[: ctx * chunks].view(chunks, ctx).clone(), Path(text_path).name)


def _scored_logprobs(model, data: EvalData, desc: str):
    """Yield (chunk index, log-probs of positions first..ctx-2) -- each predicts the next token."""
    model.eval()
    with torch.no_grad():
        for c in tqdm(range(data.tokens.shape[0]), desc=desc, unit="chunk", leave=False):
            logits = model(data.tokens[c:c + 1]).logits[0, data.first:-1].float()
            yield c, torch.log_softmax(logits, -1)


def reference(model, data: EvalData, key: str) -> np.ndarray:
    """The float model's log-probs on the scored tokens, cached as a float16 memmap."""
    digest = hashlib.sha256(data.tokens.numpy().tobytes() + key.encode()).hexdigest()[:16]
    path = cache.cache_dir() / "eval" / f"ref-{digest}.f16"
    n_scored = data.tokens.shape[1] - 1 - data.first
    vocab = model.config.vocab_size
    shape = (data.tokens.shape[0], n_scored, vocab)
    if not path.exists():
        tmp = cache.atomic_path(path)
        mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=shape)
        for c, lp in _scored_logprobs(model, data, "float reference"):
            mm[c] = lp.numpy().astype(np.float16)
        mm.flush()
        del mm
        cache.commit_file(tmp, path)
    return np.load(path, mmap_mode="r")


def evaluate(model, data: EvalData, ref: np.ndarray) -> dict:
    """Perplexity of model and mean KL(float || model) over the scored tokens."""
    nll = 0.0
    kld = 0.0
    n = 0
    for c, lp in _scored_logprobs(model, data, "evaluating"):
        target = data.tokens[c, data.first + 1:]
        nll -= lp.gather(1, target[:, None]).sum().item()
        p_ref = torch.from_numpy(np.asarray(ref[c], dtype=np.float32))
        kld += (p_ref.exp() * (p_ref - lp)).sum().item()
        n += target.numel()
    return {"ppl": math.exp(nll / n), "kld": kld / n, "tokens": n}
