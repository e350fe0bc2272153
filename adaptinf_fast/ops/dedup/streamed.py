"""Within-cluster max similarity cluster by cluster, for features that are not in memory (a
``FeatureView`` over 16-bit files) or whose clusters are split across ``torch.distributed`` ranks.

M_j depends only on j's own cluster, so the work splits into clusters: each group of clusters is
gathered (its rows only, read once), normalised in float32 on the compute device and handed to the
in-memory backend (the same kernels and tie rules as ``cluster_max_similarity`` on the whole), and
the results are scattered back. Clusters are packed into groups of at most ``max_rows`` rows; a
cluster larger than that is computed *out of core*: its rows are visited in super-blocks of
``max_rows`` rows against column chunks read from the view, with the reference's tiles (row tiles of
``reference.ROW_TILE`` rows, column chunks of ``reference.COL_CHUNK`` from the cluster's start), so
its values are exactly those of ``reference.max_similarity``.

Across ranks, clusters go to ranks by cost (n_c², longest-processing-time first); every rank
computes its clusters and the O(N) results are summed onto every rank (each row is owned by one).

Memory: O(N) scalars (labels, order, results) plus one group, ``max_rows`` × D × (2 read + 4 float32
+ 2 screened) bytes on the compute device (default ``max_rows``: 512 MiB of float32 rows); out of
core, ``max_rows`` rows in all (a super-block and a column chunk).
"""

from __future__ import annotations

import heapq
from typing import Any

import torch

from ..._io import fault_point, progress_bar
from .reference import COL_CHUNK, ROW_TILE, cluster_major, cluster_offsets

GROUP_BYTES = 512 << 20  # float32 bytes of one resident group by default


def default_rows(d: int) -> int:
    """Rows of one group by default: 512 MiB as float32 (D=256: 512k rows; D=8192: 16k rows), and
    room for an out-of-core super-block beside its column chunk."""
    return max(ROW_TILE + COL_CHUNK, GROUP_BYTES // (4 * max(d, 1)))


def assign_clusters(costs: list[int], world: int) -> list[list[int]]:
    """Clusters (by index into ``costs``) per rank, longest-processing-time first: each cluster,
    heaviest first, goes to the rank with the least work so far (ties to the lower rank)."""
    heap = [(0, r) for r in range(world)]
    out: list[list[int]] = [[] for _ in range(world)]
    for c in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        load, r = heapq.heappop(heap)
        out[r].append(c)
        heapq.heappush(heap, (load + costs[c], r))
    return [sorted(cs) for cs in out]


def _comm(distributed: bool):
    if not distributed:
        return None
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 else None


def _rows(x: Any, idx: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Rows ``idx`` of x (a tensor or a FeatureView), L2-normalised float32 on ``device``."""
    rows = x[idx.to(x.device) if isinstance(x, torch.Tensor) else idx]
    out = rows.to(device, torch.float32)
    if out is rows:  # the caller's own float32 tensor: not touched
        return torch.nn.functional.normalize(out, dim=1)
    return out.div_(out.norm(2, 1, keepdim=True).clamp_min_(1e-12))  # = F.normalize, without a second copy


def max_similarity(x: Any, labels: torch.Tensor, order: torch.Tensor, *, impl, exact_kw: dict,
                   device: torch.device, max_rows: int | None = None, distributed: bool = False,
                   progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(M float32 (N,), index int64 (N,)) as ``cluster_max_similarity`` defines them, on the CPU.

    ``x``: (N, D) tensor or ``FeatureView``; ``labels``, ``order``: CPU int64 (N,); ``impl``: the
    backend module whose ``max_similarity(xn, labels, order, progress, **exact_kw)`` computes
    groups in memory on ``device``."""
    n = labels.numel()
    max_rows = max_rows or default_rows(x.shape[1])
    perm = cluster_major(labels, order)  # cluster by cluster, each in ``order``
    spans = cluster_offsets(labels[perm]) if n else []
    dist = _comm(distributed)
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist else (0, 1)
    mine = assign_clusters([(e - s) ** 2 for s, e in spans], world)[rank]
    best = torch.full((n,), float("-inf"), dtype=torch.float32)
    arg = torch.full((n,), -1, dtype=torch.int64)
    groups: list[list[int]] = []  # small clusters packed (in span order) into groups of <= max_rows rows
    sizes: list[int] = []
    for c in mine:
        size = spans[c][1] - spans[c][0]
        if groups and size <= max_rows and sizes[-1] + size <= max_rows:
            groups[-1].append(c)
            sizes[-1] += size
        else:
            groups.append([c])
            sizes.append(size)
    bar = progress_bar(total=sum(spans[c][1] - spans[c][0] for c in mine), desc="max similarity", unit="row",
                       progress=progress and rank == 0, leave=False)
    for group in groups:
        members = torch.cat([perm[spans[c][0] : spans[c][1]] for c in group])
        if members.numel() > max_rows:
            m, a = _out_of_core(x, members, device, max_rows)
        else:
            local = torch.repeat_interleave(torch.arange(len(group)),
                                            torch.tensor([spans[c][1] - spans[c][0] for c in group]))
            xn = _rows(x, members, device)
            m, a = impl.max_similarity(xn, local.to(device), torch.arange(members.numel(), device=device),
                                       progress=False, **exact_kw)
            m, a = m.cpu(), a.cpu()
        best[members] = m
        arg[members] = torch.where(a >= 0, members[a.clamp_min(0)], torch.full_like(a, -1))
        bar.update(members.numel())
        fault_point("max_similarity:group")  # tests: a kill in the middle of pruning
    bar.close()
    if dist:  # every row was computed by exactly one rank: each rank's rows go to all (O(N), any backend)
        rows = torch.cat([perm[spans[c][0] : spans[c][1]] for c in mine]) if mine else torch.zeros(0, dtype=torch.int64)
        parts: list = [None] * world
        dist.all_gather_object(parts, (rows, best[rows], arg[rows]))
        for r_rows, r_best, r_arg in parts:
            best[r_rows], arg[r_rows] = r_best, r_arg
    return best, arg


def _out_of_core(x: Any, members: torch.Tensor, device: torch.device, max_rows: int):
    """One cluster (``members`` in order) larger than ``max_rows``: the reference's tiles, with
    super-blocks of rows resident and column chunks read per super-block."""
    n = members.numel()
    best = torch.full((n,), float("-inf"), dtype=torch.float32, device=device)
    arg = torch.full((n,), -1, dtype=torch.int64, device=device)
    block = max(ROW_TILE, (max_rows - COL_CHUNK) // ROW_TILE * ROW_TILE)
    for b0 in range(1, n, block):  # rows b0 .. b1-1 (the first row has no predecessor)
        b1 = min(n, b0 + block)
        # the tiles of this super-block, as the reference walks them: r0 = 1 + k·ROW_TILE
        tiles = [(r0, min(n, r0 + ROW_TILE)) for r0 in range(1 + ((b0 - 1) // ROW_TILE) * ROW_TILE, b1, ROW_TILE)]
        rows = _rows(x, members[tiles[0][0] : tiles[-1][1]], device)
        base = tiles[0][0]
        for c0 in range(0, tiles[-1][1] - 1, COL_CHUNK):
            c_end = min(tiles[-1][1] - 1, c0 + COL_CHUNK)
            cols = _rows(x, members[c0:c_end], device)
            for r0, r1 in tiles:
                c1 = min(r1 - 1, c0 + COL_CHUNK)  # the reference's chunk for this tile
                if c1 <= c0:
                    continue
                sims = rows[r0 - base : r1 - base] @ cols[: c1 - c0].T
                if c1 > r0:  # diagonal chunk: columns strictly before each row
                    col = torch.arange(c0, c1, device=device)
                    row = torch.arange(r0, r1, device=device).unsqueeze(1)
                    sims.masked_fill_(col >= row, float("-inf"))
                m, i = sims.max(dim=1)
                better = m > best[r0:r1]
                best[r0:r1][better] = m[better]
                arg[r0:r1][better] = i[better] + c0
    return best.cpu(), arg.cpu()


__all__ = ["GROUP_BYTES", "assign_clusters", "default_rows", "max_similarity"]
