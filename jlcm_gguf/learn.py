"""JLCM for one linear layer: grouped codebooks, block scales and indices learned jointly.

The loss is the layer's output error on calibration inputs X, through their
second moment H = X^T X:

    L(W^) = tr((W - W^) H (W - W^)^T),   W^[r, i] = s[b(r,i)] * C[g(r), i // 64, idx[r, i]]

with g(r) the row's group, b(r, i) the 64-weight block, C[g, beta] the codebook
group g uses in block column beta (inputs 64*beta .. 64*beta + 63).
Codebooks and scales take Adam steps with the indices fixed; the indices take
a proximal step with codebooks and scales fixed (see `index_step`).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from . import feedback_triton, kernels, pack
from .calibrate import Gram
from .codebook import weighted_kmeans_1d, weighted_kmeans_1d_rows
from .grouping import group_rows

QK = pack.QK


@dataclass
class Settings:
    n_groups: int | None = None # None: the type's default (DEFAULT_GROUPS); 0: a group per row
    outer_steps: int = 4        # rounds of (codebook/scale steps, index step)
    adam_steps: int = 8
    lr: float = 3e-3
    update: str = "proximal"    # "proximal" | "ste" | "none" (k-means only)
    error_feedback: bool = True # GPTQ-style column-by-column first assignment
    act_order: bool = True      # ... walking the columns by falling H_ii (GPTQ's act order)
    rho: float = 1.0            # proximal weight; doubled whenever a step would raise the loss
    sweeps: int = 3             # column-by-column index sweeps against the stored (int4) codebooks
    code_bits: int = 4          # stored codebook entries; the formats hold 4 (8 is measured in bench/)
    round_per: str = "block"    # "block" | "group": whose codebook values share one int grid
    target: str = "own"         # "own": W X^T; "float": the float model's output W X_f^T (see float_target)
    guide: float = 0.0          # weight tokens by the end loss's output gradients (calibrate.token_weights); 0: off
    sequential: bool = False    # the model loop measures o's input after q/k/v hold their codes, down's after gate/up
    seed: int = 0


# Row groups per linear when Settings.n_groups is None. JLCM2's 4 levels gain from a codebook per
# row (default model: KLD 0.844 with 16 groups, 0.705 per row); JLCM3's 8 do not (0.304 with 16,
# 0.311 per row). bench/quantizer.py, docs/METHOD.md.
DEFAULT_GROUPS = {"JLCM2": 0, "JLCM3": 16}


def n_groups_for(qtype: pack.JLCMType, settings: Settings) -> int:
    return DEFAULT_GROUPS[qtype.name] if settings.n_groups is None else settings.n_groups


@dataclass
class Result:
    qtype: pack.JLCMType
    blocks: np.ndarray          # (rows * cols / 64, type_size) uint8, rows in order
    shape: tuple[int, int]
    rel_error: float            # L(W^) / tr(W H W^T), of the layer-wise codes (before any distillation)
    history: list
    dequantized: torch.Tensor | None = None     # the weight, kept until its user lets it go

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight, equal to pack.dequantize(blocks). The model loop drops `dequantized` once the
        layer has it, so that a 7B's results hold 2.5 bits per weight, not 32."""
        if self.dequantized is not None:
            return self.dequantized
        return torch.from_numpy(pack.dequantize(self.qtype, self.blocks)).view(self.shape)


def solve_spd(A: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """x with A[i] x[i] = b[i], for a batch of symmetric positive definite A (as fit_scales builds them):
    Cholesky in float64. Not LU: after any torch.set_num_threads call, torch 2.13's batched LU on the CPU
    runs MKL's getrf in parallel threads that corrupt each other's pivots, and matrices over about 150
    wide (a 7B model's ffn_down has 172 blocks a row) come back wrong or fail (pytorch/pytorch#142815).
    A member that float32 rounding of A has left indefinite is solved alone, by LU."""
    A64, b64 = A.double(), b.double().unsqueeze(-1)
    L, info = torch.linalg.cholesky_ex(A64)
    x = torch.cholesky_solve(b64, L)
    for i in torch.nonzero(info).flatten().tolist():
        x[i] = torch.linalg.solve(A64[i], b64[i])
    return x.squeeze(-1).to(A.dtype)


def index_step(g, hdiag, s, C, groups, idx, rule: str, rho: float):
    """New indices from the loss gradient g = dL/dW^ (and the diagonal curvature hdiag = H_ii).

    Moving weight (r, i) from codeword c to c' changes it by delta = s (C[c'] - C[c]) and the loss by

        g delta + H_ii delta^2                       (exact when one weight moves)

    proximal: take the codeword minimizing  g delta + rho H_ii delta^2  -- the pull toward a codeword,
              -(that) / |delta|, falls as the codeword gets farther, so indices move to neighbours;
    ste:      take the codeword minimizing  g delta  -- the straight-through pull grows with |delta|,
              so any index with a nonzero gradient jumps to an extreme codeword.
    """
    return best_moves(g, hdiag, index_deltas(s, C, groups, idx), rule, rho)


# Row chunks of the (rows, cols, K) work below hold about this many floats: a 7B's ffn_down has 45 M
# weights, so one such tensor is 0.7 GB at K = 4 and 1.4 GB at K = 8, and unchunked the index step made
# five at once (a JLCM2 layer's RSS peaked at 6.2 GB against 1.5 GB between layers).
CHUNK_FLOATS = 1 << 25


def _row_chunks(rows: int, per_row: int):
    step = max(1, CHUNK_FLOATS // max(1, per_row))
    return [(a, min(a + step, rows)) for a in range(0, rows, step)]


def index_deltas(s, C, groups, idx):
    """(rows, cols, K): how far each weight moves if its index becomes codeword k."""
    rows, cols = idx.shape
    K = C.shape[-1]
    sw = s.view(rows, -1)
    out = torch.empty(rows, cols, K, dtype=torch.promote_types(s.dtype, C.dtype), device=s.device)
    for a, b in _row_chunks(rows, cols * K):
        cb = C[groups[a:b]].repeat_interleave(QK, dim=1)                # (chunk, cols, K): each weight's codebook
        cur = torch.gather(cb, 2, idx[a:b].unsqueeze(-1))               # (chunk, cols, 1)
        out[a:b] = sw[a:b].repeat_interleave(QK, dim=1).unsqueeze(-1) * (cb - cur)
    return out


def best_moves(g, hdiag, delta, rule: str, rho: float):
    """Each weight's best codeword by move_scores: g (rows, cols), hdiag (cols,), delta (rows, cols, K)."""
    rows, cols, K = delta.shape
    h = hdiag.view(1, -1, 1)
    new = torch.empty(rows, cols, dtype=torch.long, device=delta.device)
    for a, b in _row_chunks(rows, cols * K):
        new[a:b] = move_scores(g[a:b].unsqueeze(-1), h, delta[a:b], rule, rho).argmin(-1)
    return new


def move_scores(g, hdiag, delta, rule: str, rho: float = 1.0):
    """What moving a weight by delta is scored, under either rule (see index_step)."""
    score = g * delta
    if rule == "proximal":
        score = score + rho * hdiag * delta.pow(2)
    return score


def _c_walk_ok(w) -> bool:
    """Whether csrc's column walks can take w's arrays: float32 on the CPU."""
    return w.device.type == "cpu" and w.dtype == torch.float32


def float_target(w, H, B, damp=0.01):
    """The weight T whose output on this path's inputs X best matches the float model's W X_f^T:

        min_W^ |W X_f^T - W^ X^T|^2 / n  =  min_W^ tr((T - W^) H (T - W^)^T) + const,   T = W B H^-1

    with B = X_f^T X / n. Written T = W + W (B - H) H^-1 so that T = W exactly where the paths agree
    (the damping then shrinks nothing)."""
    Hd = H + damp * torch.diagonal(H).mean() * torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    return w + torch.linalg.solve(Hd, ((B - H).T @ w.T)).T


class JLCM:
    def __init__(self, qtype: pack.JLCMType, settings: Settings = Settings()):
        self.qtype = qtype
        self.cfg = replace(settings, n_groups=n_groups_for(qtype, settings))

    # -- the loss ----------------------------------------------------------------------------
    @staticmethod
    def loss(w, w_hat, H: Gram):
        return H.quad(w - w_hat)

    @staticmethod
    def dequant(s, C, groups, idx):
        rows, cols = idx.shape
        codes = torch.gather(C[groups], 2, idx.view(rows, cols // QK, QK)).view(rows, cols)
        return s.repeat_interleave(QK).view_as(idx) * codes

    # -- initialization ------------------------------------------------------------------------
    def init(self, w, H):
        rows, cols = w.shape
        groups = group_rows(w, self.cfg.n_groups, self.cfg.seed)
        imp = H.diag().clamp_min(1e-12).expand(rows, cols)
        blocks = w.view(rows, cols // QK, QK)
        bimp = imp.reshape(rows, cols // QK, QK)
        s = ((blocks.pow(2) * bimp).sum(-1) / bimp.sum(-1)).sqrt().clamp_min(1e-8).reshape(-1)
        z = w / s.repeat_interleave(QK).view_as(w)
        K = self.qtype.n_codes
        zb = z.view(rows, cols // QK, QK)
        if self.cfg.n_groups == 0:      # a group per row: every (row, block column) on its own, at once
            C = weighted_kmeans_1d_rows(zb.reshape(-1, QK), bimp.reshape(-1, QK), K).view(rows, cols // QK, K)
        elif w.is_cuda:                 # there a loop of small k-means is bound by launch latency
            C = self.group_kmeans(zb, bimp, groups, K)
        else:                           # here the loop keeps the bytes of every file made so far
            C = self.group_kmeans_loop(zb, bimp, groups, K)
        return s, C, groups, self._nearest(z, C, groups)

    @staticmethod
    def group_kmeans_loop(zb, bimp, groups, K):
        """A codebook per (group, block column), one k-means at a time: (groups, block columns, K)."""
        return torch.stack([torch.stack([weighted_kmeans_1d(zb[groups == g, b].reshape(-1),
                                                            bimp[groups == g, b].reshape(-1), K)
                                         for b in range(zb.shape[1])])
                            for g in range(int(groups.max()) + 1)])

    @staticmethod
    def group_kmeans(zb, bimp, groups, K):
        """A codebook per (group, block column): (groups, block columns, K). All of them at once, each
        group's samples padded to the largest group's count with weightless copies of its largest value
        (a weightless sample moves no centroid and is never a starting quantile). The centroids equal
        the loop's up to float rounding, which learning can carry into other codes."""
        rows, nb, _ = zb.shape
        G = int(groups.max()) + 1
        counts = torch.bincount(groups, minlength=G).tolist()
        n = max(counts) * QK
        x = zb.new_zeros(G, nb, n)
        imp = zb.new_zeros(G, nb, n)
        for g in range(G):
            members = (groups == g).nonzero().squeeze(1)
            m = counts[g] * QK
            x[g, :, :m] = zb[members].transpose(0, 1).reshape(nb, m)
            imp[g, :, :m] = bimp[members].transpose(0, 1).reshape(nb, m)
            x[g, :, m:] = x[g, :, :m].max(1, keepdim=True).values
        return weighted_kmeans_1d_rows(x.view(G * nb, n), imp.view(G * nb, n), K).view(G, nb, K)

    @staticmethod
    def error_feedback_assign(w, H, s, C, groups, damp=0.01, block=128, gpu_walk=None, c_walk=None,
                              act_order=True):
        """Indices chosen column by column, each column's output error pushed onto the columns not yet
        assigned (GPTQ's update through the Cholesky factor of H^-1), with the group codebooks as grid.
        act_order: walk the columns by falling H_ii (GPTQ's act order), so the inputs that matter most are
        assigned first and the later, cheaper ones absorb their errors; every column keeps its own block's
        scale and codebook. gpu_walk: walk each block's columns in one Triton kernel (default: on CUDA
        tensors, when Triton is installed; see feedback_triton). c_walk: walk them in C (default: float32
        on the CPU; the same bits as the eager loop, _walk_block)."""
        rows, cols = w.shape
        if gpu_walk is None:
            gpu_walk = w.is_cuda and feedback_triton.available()
        if c_walk is None:
            c_walk = _c_walk_ok(w)
        order, dead, U = H.feedback_factor(damp, act_order)
        W = w[:, order]                                                 # a copy, in the walk's order
        W[:, dead] = 0
        col_block = (order // QK).contiguous()                          # each walked column's block column
        sb = s.view(rows, -1).contiguous()                              # (rows, block columns)
        cbs = C[groups].contiguous()                                    # (rows, block columns, K)
        idx = torch.empty(rows, cols, dtype=torch.long, device=w.device)    # in the walk's order
        for a in range(0, cols, block):
            b = min(a + block, cols)
            if gpu_walk:
                Err = feedback_triton.walk_block(W[:, a:b], sb, cbs, U[a:b, a:b].contiguous(), col_block[a:b],
                                                 idx[:, a:b])
            elif c_walk:
                Err = torch.empty(rows, b - a, dtype=w.dtype)
                kernels.walk_feedback(W[:, a:b].numpy(), sb.numpy(), cbs.numpy(), U[a:b, a:b].numpy(),
                                      col_block[a:b].numpy(), idx[:, a:b].numpy(), Err.numpy())
            else:
                Err = JLCM._walk_block(W[:, a:b], sb, cbs, U, a, b, col_block, idx)
            W[:, b:] -= Err @ U[a:b, b:]
        out = torch.empty_like(idx)
        out[:, order] = idx
        return out

    @staticmethod
    def _walk_block(Wb, sw, cbs, U, a, b, col_block, idx):
        """Columns a..b-1 of the error feedback's walk, one at a time; returns their scaled errors.
        sw: (rows, block columns) scales; col_block: each walked column's block column."""
        Wb = Wb.clone()
        Err = torch.zeros_like(Wb)
        for j in range(b - a):
            c = a + j
            col = Wb[:, j]
            blk = int(col_block[c])
            cb = cbs[:, blk]
            k = ((col / sw[:, blk]).unsqueeze(1) - cb).abs().argmin(1)
            idx[:, c] = k
            q = sw[:, blk] * cb.gather(1, k[:, None]).squeeze(1)
            e = (col - q) / U[c, c]
            Wb[:, j:] -= e[:, None] * U[c, c:b][None, :]
            Err[:, j] = e
        return Err

    @staticmethod
    def _nearest(z, C, groups):
        cb = C[groups].repeat_interleave(QK, dim=1)
        return (z.unsqueeze(-1) - cb).abs().argmin(-1)

    # -- learning ------------------------------------------------------------------------------
    def fit_continuous(self, w, H, s, C, groups, idx, steps):
        """Adam on log-scales and codebooks together, with the indices fixed."""
        log_s = s.abs().clamp_min(1e-12).log().clone().requires_grad_(True)
        sign = torch.sign(s) + (s == 0)
        C = C.clone().requires_grad_(True)
        opt = torch.optim.Adam([log_s, C], lr=self.cfg.lr)
        for _ in range(steps):
            opt.zero_grad()
            self.loss(w, self.dequant(sign * log_s.exp(), C, groups, idx), H).backward()
            opt.step()
        return (sign * log_s.exp()).detach(), C.detach()

    @staticmethod
    def fit_scales(w, H, s, C, groups, idx, ridge=1e-6, chunk_floats=1 << 24):
        """The block scales that minimize the loss with codebooks and indices fixed. W^ is linear in them,
        so each row's nb scales solve a small least-squares problem:

            A_r s_r = y_r,   A_r[b, c] = q_rb H_bc q_rc^T,   y_r[b] = q_rb (H w_r^T)_b

        with q_rb row r's codewords in block b. A ridge pulls a scale the data does not determine (a block
        of zero codewords, or of dead inputs) toward its current value instead of letting it float."""
        rows, cols = w.shape
        nb = cols // QK
        Q = JLCM.dequant(torch.ones_like(s), C, groups, idx).view(rows, nb, QK)
        s0 = s.view(rows, nb)
        out = torch.empty_like(s0)
        WH = H.times(w).view(rows, nb, QK)
        if H.h is None:     # H = F^T F: A_r = V_r V_r^T, V_r[b] = F_b q_rb^T, rows * cols * n work, not rows * cols^2
            Fb = H.factor.view(-1, nb, QK).transpose(0, 1)                  # (nb, n, QK)
            step = max(1, chunk_floats // (nb * Fb.shape[1]))               # V holds step x nb x n floats
        else:
            Hb = H.h.view(nb, QK, cols)
            step = max(1, chunk_floats // (nb * cols))                      # T holds step x nb x cols floats
        for a in range(0, rows, step):
            q = Q[a:a + step]
            if H.h is None:
                V = torch.bmm(q.transpose(0, 1), Fb.transpose(1, 2)).transpose(0, 1)   # (rows, nb, n)
                A = torch.bmm(V, V.transpose(1, 2))                                     # (rows, nb, nb)
            else:
                T = torch.bmm(q.transpose(0, 1), Hb).transpose(0, 1)        # (rows, nb, cols): q_rb H_b.
                A = (T.reshape(-1, nb, nb, QK) * q.unsqueeze(1)).sum(-1)    # (rows, nb, nb)
            y = (q * WH[a:a + step]).sum(-1)
            lam = ridge * torch.diagonal(A, dim1=1, dim2=2).mean(1).clamp_min(1e-30)
            A = A + lam[:, None, None] * torch.eye(nb, dtype=A.dtype, device=A.device)
            out[a:a + step] = solve_spd(A, y + lam[:, None] * s0[a:a + step])
        return out.reshape(-1)

    def fit_indices(self, w, H, s, C, groups, idx, rho):
        """One index step; rho doubles until the step lowers the loss (or the step is dropped)."""
        w_hat = self.dequant(s, C, groups, idx)
        before = self.loss(w, w_hat, H)
        g = -2 * H.times(w - w_hat)
        hdiag = H.diag()
        delta = index_deltas(s, C, groups, idx)             # index_step's, computed once for every rho tried
        for _ in range(6):
            new = best_moves(g, hdiag, delta, self.cfg.update, rho)
            if self.loss(w, self.dequant(s, C, groups, new), H) < before:
                return new, rho
            if self.cfg.update != "proximal":
                return idx, rho
            rho *= 2
        return idx, rho

    def learn(self, w, H, s, C, groups, idx):
        history = []
        rho = self.cfg.rho
        norm = self.loss(w, torch.zeros_like(w), H)
        for _ in range(self.cfg.outer_steps if self.cfg.update != "none" else 0):
            s, C = self.fit_continuous(w, H, s, C, groups, idx, self.cfg.adam_steps)
            idx, rho = self.fit_indices(w, H, s, C, groups, idx, rho)
            history.append(float(self.loss(w, self.dequant(s, C, groups, idx), H) / norm))
        return s, C, idx, history

    # -- storage -------------------------------------------------------------------------------
    def to_storage(self, w, H, s, C, groups, idx):
        """Put each block's codebook on the int4 grid, then refit scales and indices to it.
        Returns per-block codebooks: (scales, codebooks (rows, block columns, K), row-as-group labels, indices)."""
        # Every block stores its own codebook, so the rounding is done per block: the block's codebook
        # values s_b * C[g, b] get the int4 unit that suits that block's weights, not its group's.
        rows, cols = w.shape
        nb, K = cols // QK, C.shape[-1]
        if self.cfg.round_per == "group":
            G = C.shape[0]
            Cq, unit = self.project_codebooks(C.view(G * nb, K), self.code_usage(H, groups, idx, C.shape),
                                              self.cfg.code_bits)
            Cq, s = Cq.view(G, nb, K)[groups], s * unit.view(G, nb)[groups].reshape(-1)
        else:
            values = C[groups] * s.view(rows, nb, 1)                          # (rows, block columns, K)
            Cq, s = self.project_codebooks(values.view(rows * nb, K),
                                           self.code_usage(H, torch.arange(rows, device=w.device), idx, values.shape),
                                           self.cfg.code_bits)
            Cq = Cq.view(rows, nb, K)
        groups = torch.arange(rows, device=w.device)
        s = self.fit_scales(w, H, s, Cq, groups, idx)
        if self.cfg.error_feedback:
            # rounding can merge codewords; reassigning against the grid codebook repairs that
            redo = self.error_feedback_assign(w, H, s, Cq, groups, act_order=self.cfg.act_order)
            if self.loss(w, self.dequant(s, Cq, groups, redo), H) < self.loss(w, self.dequant(s, Cq, groups, idx), H):
                idx = redo
        if self.cfg.update != "none":
            idx, _ = self.fit_indices(w, H, s, Cq, groups, idx, self.cfg.rho)
        s = self.fit_scales(w, H, s, Cq, groups, idx)
        for _ in range(self.cfg.sweeps if self.cfg.update != "none" else 0):
            idx = self.sweep_indices(w, H, s, Cq, groups, idx, self.cfg.update)
            s = self.fit_scales(w, H, s, Cq, groups, idx)
        return s.half().float(), Cq, groups, idx

    @staticmethod
    def sweep_indices(w, H, s, C, groups, idx, rule="proximal", block=128, c_walk=None):
        """The index step taken one column at a time, the gradient refreshed after each (Gauss-Seidel where
        fit_indices is Jacobi). Column i's weights move by the rule's score with rho = 1, which for the
        proximal rule is the exact change of the loss given every other weight: no move can raise it, so
        no rho is needed, and moves of correlated columns no longer work against each other.
        The gradient is kept as E H (E = W - W^); inside a block of columns it is updated column by column,
        for the columns after the block at its end, by one matrix product. c_walk: walk a block's columns
        in C (default: float32 on the CPU; the same bits as the eager loop)."""
        if c_walk is None:
            c_walk = _c_walk_ok(w)
        Hf = H.full()
        rows, cols = w.shape
        idx = idx.clone()
        w_hat = JLCM.dequant(s, C, groups, idx)
        EH = (w - w_hat) @ Hf
        hd = torch.diagonal(Hf)
        sb = s.view(rows, -1).contiguous()
        cbs = C[groups].contiguous()                                    # (rows, block columns, K)
        for a in range(0, cols, block):
            b = min(a + block, cols)
            EHb = EH[:, a:b].clone()
            D = torch.zeros(rows, b - a, dtype=w.dtype, device=w.device)
            if c_walk:
                kernels.walk_sweep(w_hat.numpy(), EHb.numpy(), sb.numpy(), cbs.numpy(), Hf[a:b, a:b].numpy(),
                                   hd[a:b].numpy(), a, QK, rule == "proximal", idx.numpy(), D.numpy())
            else:
                JLCM._sweep_block(w_hat, EHb, sb, cbs, Hf, hd, a, b, rule, idx, D)
            EH[:, b:] -= D @ Hf[a:b, b:]            # columns before a are not read again in this sweep
        return idx

    @staticmethod
    def _sweep_block(w_hat, EHb, sb, cbs, Hf, hd, a, b, rule, idx, D):
        """Columns a..b-1 of a sweep, one at a time: updates idx, w_hat and EHb, writes the moves into D."""
        for j in range(b - a):
            i = a + j
            delta = sb[:, i // QK, None] * cbs[:, i // QK] - w_hat[:, i, None]      # (rows, K)
            k = move_scores(-2 * EHb[:, j, None], hd[i], delta, rule).argmin(1)
            d = delta.gather(1, k[:, None]).squeeze(1)
            idx[:, i] = k
            w_hat[:, i] += d
            D[:, j] = d
            EHb[:, j + 1:] -= d[:, None] * Hf[i, i + 1:b][None, :]

    @staticmethod
    def code_usage(H, groups, idx, shape):
        """How much each codeword matters: the curvature H_ii summed over the weights using it.
        Returns (groups * block columns, K)."""
        G, nb, K = shape
        rows, cols = idx.shape
        imp = H.diag().expand_as(idx)
        col_block = torch.arange(cols, device=idx.device) // QK
        flat = (groups[:, None] * nb + col_block[None, :]) * K + idx
        usage = torch.zeros(G * nb * K, dtype=imp.dtype, device=imp.device)
        return usage.index_add_(0, flat.reshape(-1), imp.reshape(-1)).view(G * nb, K)

    @staticmethod
    def project_codebooks(C, usage, bits=4, shrink=(1.0, 0.85, 0.7, 0.55, 0.4, 0.3)):
        """Integer codebooks in [-8, 7] (bits=4) and their unit, per row of C. A heavy-tailed codebook spans more than 16
        steps; clipping its extreme entry can lose less than collapsing its inner ones, so the unit is
        chosen among a few shrink factors by the usage-weighted rounding error."""
        used = usage > 0       # a codeword no weight uses must not stretch the grid
        hi = torch.where(used, C, torch.full_like(C, -float("inf"))).max(1).values.clamp_min(0)
        lo = torch.where(used, C, torch.full_like(C, float("inf"))).min(1).values.clamp_max(0)
        qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        full = torch.maximum(hi / qmax, lo / qmin).clamp_min(1e-12)
        best_err = torch.full_like(full, float("inf"))
        best_alpha = full.clone()
        for f in shrink:
            alpha = full * f
            Cq = torch.round(C / alpha[:, None]).clamp(qmin, qmax)
            err = (usage * (C - alpha[:, None] * Cq) ** 2).sum(1)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_alpha = torch.where(better, alpha, best_alpha)
        return torch.round(C / best_alpha[:, None]).clamp(qmin, qmax), best_alpha

    def quantize(self, w: torch.Tensor, H: torch.Tensor | Gram) -> Result:
        """H: the input's second moment X^T X / n, as a matrix or a `Gram`."""
        w = w.float()
        H = H if isinstance(H, Gram) else Gram(H.float())
        cols = w.shape[1]
        if cols % QK:
            raise ValueError(f"{self.qtype.name} needs rows that are a multiple of {QK} wide, got {cols}")
        torch.manual_seed(self.cfg.seed)
        # the backward of the codebook lookups accumulates with scatter-adds, whose order is free
        # unless deterministic algorithms are asked for; the same inputs must give the same bytes
        previous = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            return self._quantize(w, H)
        finally:
            torch.use_deterministic_algorithms(previous)

    def _quantize(self, w, H) -> Result:
        rows, cols = w.shape
        s, C, groups, idx = self.init(w, H)
        if self.cfg.error_feedback:
            idx = self.error_feedback_assign(w, H, s, C, groups, act_order=self.cfg.act_order)
        s, C, idx, history = self.learn(w, H, s, C, groups, idx)
        s, Cq, groups, idx = self.to_storage(w, H, s, C, groups, idx)
        nb = rows * cols // QK
        blocks = pack.pack(self.qtype, s.cpu().numpy().astype(np.float16),
                           Cq[groups].reshape(nb, -1).to(torch.int8).cpu().numpy(),
                           idx.view(nb, QK).to(torch.uint8).cpu().numpy())
        # the packed bytes' values, computed where w lives (fp16 scale times a 4-bit entry: exact in fp32)
        w_hat = self.dequant(s, Cq, groups, idx)
        norm = self.loss(w, torch.zeros_like(w), H)
        return Result(self.qtype, blocks, (rows, cols), float(self.loss(w, w_hat, H) / norm), history, w_hat)
