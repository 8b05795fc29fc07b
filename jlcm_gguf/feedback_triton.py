"""The error-feedback assignment's column loop on a GPU: one Triton kernel per block of columns.

`learn.JLCM.error_feedback_assign` walks the columns one at a time. In eager torch each column
costs about a dozen small kernels, so on a GPU the walk is bound by launch latency, not
arithmetic: a Llama-7B decoder layer has 35,584 columns, walked twice. Inside a block of
columns the rows do not interact (a row's error moves only that row's later columns), so here
one program takes a tile of rows and walks the block's columns itself, holding the tile in
registers. The step per column is the eager one, operation for operation; only the update
between blocks (a matrix product) stays in torch.

Triton is optional: without it, or on the CPU, the eager loop runs. TRITON_INTERPRET=1 runs the
kernel on the CPU through numpy, which is how the tests check it against the eager loop.
"""
from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:         # the package works without it; the GPU walk is then eager
    triton = None

ROWS = 16       # rows per program
COLS = 128      # the widest block a program walks (learn's block of columns)


def available() -> bool:
    return triton is not None


if triton is not None:
    @triton.jit
    def _walk(W, S, CB, U, BLK, IDX, ERR, rows, ld_w, ld_s, ld_cb, ld_u, ld_idx, ld_err,
              K: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr):
        # BC: the block's width (64 or 128: a compiled variant each)
        r = tl.program_id(0) * BR + tl.arange(0, BR)
        live = r < rows
        c = tl.arange(0, BC)
        kk = tl.arange(0, K)
        tile = tl.load(W + r[:, None] * ld_w + c[None, :], mask=live[:, None], other=0.0)
        for j in range(BC):
            col = tl.sum(tl.where(c[None, :] == j, tile, 0.0), axis=1)      # exact: one term is nonzero
            blk = tl.load(BLK + j)
            s = tl.load(S + r * ld_s + blk, mask=live, other=1.0)
            cb = tl.load(CB + r[:, None] * ld_cb + blk * K + kk[None, :], mask=live[:, None], other=0.0)
            k = tl.argmin(tl.abs((col / s)[:, None] - cb), axis=1)          # first of equals, as torch
            q = s * tl.sum(tl.where(kk[None, :] == k[:, None], cb, 0.0), axis=1)
            e = (col - q) / tl.load(U + j * ld_u + j)
            u = tl.load(U + j * ld_u + c, mask=c >= j, other=0.0)
            tile = tile - e[:, None] * u[None, :]
            tl.store(IDX + r * ld_idx + j, k.to(tl.int64), mask=live)
            tl.store(ERR + r * ld_err + j, e, mask=live)


def walk_block(Wb: torch.Tensor, s: torch.Tensor, cbs: torch.Tensor, Ub: torch.Tensor, col_block: torch.Tensor,
               idx: torch.Tensor) -> torch.Tensor:
    """Assign the columns of Wb (rows, width 64 or 128; the walk's next columns after the earlier
    blocks' feedback), col_block (width,) int64 their block columns. s: (rows, blocks) scales, cbs:
    (rows, blocks, K) codebooks, Ub: this block's
    (width, width) corner of the upper Cholesky factor of H^-1. Writes the indices into idx (rows,
    width; int64) and returns the scaled errors (rows, width) the later blocks take."""
    rows, width = Wb.shape
    if width not in (64, COLS) or Wb.stride(1) != 1 or idx.stride(1) != 1 or Ub.stride(1) != 1:
        raise ValueError("walk_block: 64 or 128 columns, each row contiguous")
    s, cbs = s.contiguous(), cbs.contiguous()
    err = torch.empty(rows, width, dtype=Wb.dtype, device=Wb.device)
    _walk[(triton.cdiv(rows, ROWS),)](
        Wb, s, cbs, Ub, col_block.contiguous(), idx, err, rows, Wb.stride(0), s.stride(0), cbs.stride(0),
        Ub.stride(0), idx.stride(0), err.stride(0), K=cbs.shape[2], BR=ROWS, BC=width)
    return err
