"""Plain-torch within-cluster max similarity (DESIGN §4.3), tiled over each cluster's triangle.

Samples are gathered cluster by cluster (in ``order`` inside each cluster); a row tile of a
cluster is compared only with the cluster's columns up to that tile, in column chunks, with the
diagonal chunk masked to strictly earlier samples. Peak extra memory is one ROW_TILE × COL_CHUNK
block plus O(N): never n_c².
"""

from __future__ import annotations

import torch

from ..._io import progress_bar

ROW_TILE = 512
COL_CHUNK = 4096


def cluster_offsets(sorted_labels: torch.Tensor) -> list[tuple[int, int]]:
    """(start, end) of each run of equal labels in a label vector sorted by cluster."""
    _, counts = torch.unique_consecutive(sorted_labels, return_counts=True)
    ends = torch.cumsum(counts, 0).tolist()
    return list(zip([0] + ends[:-1], ends))


def cluster_major(labels: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Permutation grouping samples by label, in ``order`` within each cluster."""
    return order[torch.argsort(labels[order], stable=True)]


def cluster_tiles(xn: torch.Tensor, labels: torch.Tensor, order: torch.Tensor, tile_rows: int):
    """The kernels' layout: (perm, rows gathered cluster-major (contiguous), start of each row's
    cluster (int64, N), first rows of the row tiles sorted longest walk first (int64))."""
    n = xn.shape[0]
    perm = cluster_major(labels, order)
    # No copy when the rows are already grouped (meta tensors, in the static check, cannot compare).
    grouped = perm.device.type != "meta" and torch.equal(perm, torch.arange(n, device=perm.device))
    xs = xn.contiguous() if grouped else xn[perm]
    sorted_labels = labels[perm]
    new_cluster = torch.ones(n, dtype=torch.bool, device=xn.device)
    new_cluster[1:] = sorted_labels[1:] != sorted_labels[:-1]
    starts = torch.arange(n, device=xn.device).masked_fill(~new_cluster, 0)
    cstart = torch.cummax(starts, 0).values
    tile_r0 = torch.arange(0, n, tile_rows, device=xn.device)
    walk = torch.minimum(tile_r0 + tile_rows, torch.tensor(n, device=xn.device)) - cstart[tile_r0]
    tiles = tile_r0[torch.argsort(walk, descending=True, stable=True)].contiguous()
    return perm, xs, cstart, tiles


def max_similarity(xn: torch.Tensor, labels: torch.Tensor, order: torch.Tensor, progress: bool = False):
    """For L2-normalised float32 rows ``xn`` (N, D): (M float32 (N,), argmax int64 (N,)).

    M_j is the largest cosine similarity to an earlier (in ``order``) sample of j's cluster, -inf
    with index -1 when there is none. Ties go to the earliest such sample.
    """
    n = xn.shape[0]
    perm = cluster_major(labels, order)
    xs = xn if torch.equal(perm, torch.arange(n, device=perm.device)) else xn[perm]  # no copy when already grouped
    best = torch.full((n,), float("-inf"), dtype=torch.float32, device=xn.device)
    arg = torch.full((n,), -1, dtype=torch.int64, device=xn.device)
    spans = cluster_offsets(labels[perm])
    for start, end in progress_bar(spans, desc="max similarity", unit="cluster", progress=progress, leave=False):
        for r0 in range(start + 1, end, ROW_TILE):  # the cluster's first sample has no predecessor
            r1 = min(end, r0 + ROW_TILE)
            rows = xs[r0:r1]
            tile_best = best[r0:r1]
            tile_arg = arg[r0:r1]
            for c0 in range(start, r1 - 1, COL_CHUNK):
                c1 = min(r1 - 1, c0 + COL_CHUNK)  # columns strictly before the tile's last row
                sims = rows @ xs[c0:c1].T
                if c1 > r0:  # diagonal chunk: keep only columns before each row
                    col = torch.arange(c0, c1, device=xn.device)
                    row = torch.arange(r0, r1, device=xn.device).unsqueeze(1)
                    sims.masked_fill_(col >= row, float("-inf"))
                m, i = sims.max(dim=1)
                better = m > tile_best
                tile_best[better] = m[better]
                tile_arg[better] = i[better] + c0
    return to_original_order(perm, best, arg)


def exact_rows(xn: torch.Tensor, labels: torch.Tensor, order: torch.Tensor, rows: torch.Tensor,
               chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 (M_j, argmax) for the given rows (original indices), as ``max_similarity`` defines
    them: max over earlier (in ``order``) rows of the same cluster, ties to the earliest."""
    pos = torch.empty_like(order)
    pos[order] = torch.arange(order.numel(), device=order.device)
    best = torch.full((rows.numel(),), float("-inf"), dtype=torch.float32, device=xn.device)
    arg = torch.full((rows.numel(),), -1, dtype=torch.int64, device=xn.device)
    row_labels = labels[rows]
    for c in row_labels.unique():
        members = (labels == c).nonzero().flatten()
        members = members[torch.argsort(pos[members])]  # max() keeps the first of equal values
        where = (row_labels == c).nonzero().flatten()
        for w0 in range(0, where.numel(), chunk):
            w = where[w0 : w0 + chunk]
            r = rows[w]
            sims = xn[r] @ xn[members].T
            sims.masked_fill_(pos[members][None, :] >= pos[r][:, None], float("-inf"))
            m, i = sims.max(dim=1)
            best[w] = m
            arg[w] = torch.where(m > float("-inf"), members[i], torch.full_like(i, -1))
    return best, arg


def to_original_order(perm: torch.Tensor, best: torch.Tensor, arg: torch.Tensor):
    """Results computed in cluster-major order (positions in ``perm``) back to original indices."""
    m_out = torch.empty_like(best)
    m_out[perm] = best
    arg_out = torch.full_like(arg, -1)
    has = arg >= 0
    arg_out[perm[has]] = perm[arg[has]]
    return m_out, arg_out
