"""Importance-weighted k-means: the codebook initialization, and the row clustering of `grouping`."""
from __future__ import annotations

import torch


def weighted_kmeans_1d(x: torch.Tensor, w: torch.Tensor, k: int, iters: int = 30) -> torch.Tensor:
    """k sorted centroids of scalar samples x with importances w (Lloyd's algorithm, quantile start)."""
    order = torch.argsort(x)
    xs, ws = x[order], w[order]
    cw = torch.cumsum(ws, 0)
    # start at the importance-weighted quantiles: deterministic and already close to Lloyd-Max
    targets = (torch.arange(k, dtype=x.dtype, device=x.device) + 0.5) / k * cw[-1]
    c = xs[torch.searchsorted(cw, targets).clamp(max=xs.numel() - 1)].clone()
    for _ in range(iters):
        a = assign_nearest(xs, c)
        num = torch.zeros(k, dtype=x.dtype, device=x.device).index_add_(0, a, ws * xs)
        den = torch.zeros(k, dtype=x.dtype, device=x.device).index_add_(0, a, ws)
        new = torch.where(den > 0, num / den.clamp_min(1e-30), c)
        if torch.allclose(new, c):
            break
        c = new
    return torch.sort(c).values


def weighted_kmeans_1d_rows(x: torch.Tensor, w: torch.Tensor, k: int, iters: int = 30) -> torch.Tensor:
    """weighted_kmeans_1d of every row of x (n, m) with importances w (n, m) at once: (n, k).
    The same iterations row by row (a row stops where it alone would), in tensor operations: a
    codebook per row and block (`--groups 0`) is hundreds of thousands of tiny problems."""
    order = torch.argsort(x, dim=1)
    xs, ws = x.gather(1, order), w.gather(1, order)
    cw = torch.cumsum(ws, 1)
    targets = (torch.arange(k, dtype=x.dtype, device=x.device) + 0.5) / k * cw[:, -1:]
    c = xs.gather(1, torch.searchsorted(cw, targets).clamp(max=x.shape[1] - 1))
    live = torch.arange(x.shape[0], device=x.device)      # rows still moving
    for _ in range(iters):
        cl, xl, wl = c[live], xs[live], ws[live]
        a = torch.searchsorted(((cl[:, 1:] + cl[:, :-1]) / 2).contiguous(), xl)
        num = torch.zeros_like(cl).scatter_add_(1, a, wl * xl)
        den = torch.zeros_like(cl).scatter_add_(1, a, wl)
        new = torch.where(den > 0, num / den.clamp_min(1e-30), cl)
        settled = ((new - cl).abs() <= 1e-8 + 1e-5 * cl.abs()).all(1)      # torch.allclose, per row
        c[live[~settled]] = new[~settled]
        live = live[~settled]
        if live.numel() == 0:
            break
    return torch.sort(c, 1).values


def assign_nearest(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centroid for each element of x (c sorted ascending)."""
    mid = (c[1:] + c[:-1]) / 2
    return torch.bucketize(x.contiguous(), mid.contiguous())


def kmeans_rows(feats: torch.Tensor, k: int, seed: int, iters: int = 25) -> torch.Tensor:
    """Cluster the rows of feats into k groups (k-means++ start, seeded); returns a label per row."""
    n = feats.shape[0]
    k = min(k, n)
    g = torch.Generator().manual_seed(seed)
    centers = [feats[torch.randint(n, (1,), generator=g)].squeeze(0)]
    d2 = ((feats - centers[0]) ** 2).sum(1)
    for _ in range(1, k):
        p = d2 / d2.sum() if d2.sum() > 0 else torch.full_like(d2, 1.0 / n)
        i = torch.multinomial(p.cpu(), 1, generator=g).item()
        centers.append(feats[i])
        d2 = torch.minimum(d2, ((feats - feats[i]) ** 2).sum(1))
    c = torch.stack(centers)
    for _ in range(iters):
        labels = torch.cdist(feats, c).argmin(1)
        new = torch.zeros_like(c).index_add_(0, labels, feats)
        cnt = torch.bincount(labels, minlength=k).to(feats.dtype)
        new = torch.where(cnt[:, None] > 0, new / cnt.clamp_min(1)[:, None], c)
        if torch.allclose(new, c):
            break
        c = new
    return torch.cdist(feats, c).argmin(1)
