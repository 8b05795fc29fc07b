"""Neuron grouping: rows (output neurons) whose weights are distributed alike share a codebook.

A row is described by the shape of its weight distribution, not by where its
weights sit: the sorted, RMS-normalized weights sampled at fixed quantiles.
Rows with the same shape want the same codebook up to a scale, which each block
carries anyway; so grouping costs no bytes and no permutation of the model.
"""
from __future__ import annotations

import torch

from .codebook import kmeans_rows

N_QUANTILES = 32


def row_profiles(w: torch.Tensor) -> torch.Tensor:
    rms = w.pow(2).mean(1, keepdim=True).sqrt().clamp_min(1e-12)
    s = torch.sort(w / rms, dim=1).values
    q = torch.linspace(0, 1, N_QUANTILES + 2, dtype=w.dtype, device=w.device)[1:-1]
    pos = (q * (w.shape[1] - 1)).round().long()
    return s[:, pos]


def group_rows(w: torch.Tensor, n_groups: int, seed: int = 0) -> torch.Tensor:
    """A group label per row of w; n_groups=1 puts every row in one group (one codebook per tensor),
    n_groups=0 gives every row its own."""
    if n_groups == 0:
        return torch.arange(w.shape[0], device=w.device)
    if n_groups <= 1:
        return torch.zeros(w.shape[0], dtype=torch.long, device=w.device)
    labels = kmeans_rows(row_profiles(w.float()), n_groups, seed)
    # renumber by first appearance so labels do not depend on k-means' internal order
    _, first = torch.unique(labels, return_inverse=True)
    return first
