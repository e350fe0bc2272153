"""Lloyd iterations over chunked data, optionally across ``torch.distributed`` ranks (DESIGN §4.2).

The data is visited in row chunks, each moved to the compute device and prepared (float32,
L2-normalised for cosine) on the fly, so a NumPy memmap or a host tensor larger than device memory
is streamed with O(chunk) extra memory (pinned host buffers, asynchronous copies). Per iteration
each chunk is assigned, and centroid sums (float32 per chunk, float64 across chunks) and counts are accumulated; under an
initialised process group they are all-reduced, so every rank ends with the same centroids as a
single process fitting the union of the shards. With sample weights, a centroid is the weighted
mean of its points, the inertia the weighted sum of squared distances, and a cluster whose points
weigh nothing in all is empty.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from ..._io import progress_bar

# assign(chunk start, x_chunk, centroids, values wanted) -> (labels, values or None)
Assign = Callable[[int, torch.Tensor, torch.Tensor, bool], "tuple[torch.Tensor, torch.Tensor | None]"]
CHUNK_BYTES = 256 << 20  # float32 bytes of one prepared chunk


@dataclass
class LloydResult:
    centers: torch.Tensor  # float32 (K, D)
    labels: torch.Tensor  # int64 (N_local,)
    inertia: float  # global
    n_iter: int


class Comm:
    """All-reduce helpers that are no-ops without an initialised multi-process group."""

    def __init__(self, enabled: bool = True):
        import torch.distributed as dist

        on = enabled and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        self.dist = dist if on else None
        self.rank = dist.get_rank() if on else 0
        self.world = dist.get_world_size() if on else 1

    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        if self.dist is not None:
            self.dist.all_reduce(t)
        return t

    def sizes(self, n: int) -> list[int]:
        if self.dist is None:
            return [n]
        out = [None] * self.world
        self.dist.all_gather_object(out, n)
        return out


class Data:
    """Rows to cluster (tensor, NumPy array or memmap, or a ``FeatureView`` over files; any float
    dtype), served as prepared device chunks. Rows that are not already on the compute device are
    streamed: one chunk read (from disk for a view) ahead of the one being computed, and nothing
    per chunk kept across iterations."""

    def __init__(self, x, metric: str, device: torch.device, chunk_rows: int | None = None,
                 weights: torch.Tensor | None = None):
        self.x = torch.from_numpy(x) if isinstance(x, np.ndarray) else x
        self.n, self.d = self.x.shape
        self.w = None if weights is None else weights.to(device, torch.float32)  # (N,) sample weights
        self.metric, self.device = metric, device
        self.chunk_rows = chunk_rows or max(1, CHUNK_BYTES // (4 * max(self.d, 1)))
        self.stream = not isinstance(self.x, torch.Tensor) or (self.x.device != device and device.type == "cuda")
        self._sqnorms: dict[int, torch.Tensor] = {}  # row norms are fixed: computed once per chunk
        self._kept: dict[tuple[str, int], object] = {}

    def sqnorms(self, start: int, xc: torch.Tensor) -> torch.Tensor | None:
        if self.metric == "cosine":
            return None
        if start not in self._sqnorms:
            self._sqnorms[start] = torch.linalg.vector_norm(xc, dim=1).square_()
        return self._sqnorms[start]

    def kept(self, name: str, start: int, make: Callable[[], object]) -> object:
        """``make()`` for the chunk at ``start``, kept across iterations when the data lives on the
        compute device (streamed chunks are not kept: memory stays O(chunk))."""
        if self.stream:
            return make()
        key = (name, start)
        if key not in self._kept:
            self._kept[key] = make()
        return self._kept[key]

    def prepare(self, rows: torch.Tensor) -> torch.Tensor:
        if self.stream and self.device.type == "cuda" and rows.device.type == "cpu":
            rows = rows.pin_memory().to(self.device, non_blocking=True)
        out = rows.to(self.device, torch.float32)
        if self.metric != "cosine":
            return out
        if out is rows:  # the caller's own tensor: not touched
            return torch.nn.functional.normalize(out, dim=1)
        return out.div_(out.norm(2, 1, keepdim=True).clamp_min_(1e-12))  # = F.normalize, without a second copy

    def chunks(self) -> Iterator[tuple[int, torch.Tensor]]:
        starts = range(0, self.n, self.chunk_rows)
        if not isinstance(self.x, torch.Tensor):  # rows read from files: the next chunk is read while this one computes
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(1) as pool:
                ahead = pool.submit(self.x.__getitem__, slice(0, self.chunk_rows)) if self.n else None
                for start in starts:
                    rows = ahead.result()
                    nxt = start + self.chunk_rows
                    ahead = pool.submit(self.x.__getitem__, slice(nxt, nxt + self.chunk_rows)) if nxt < self.n else None
                    yield start, self.prepare(rows)
            return
        for start in starts:
            yield start, self.prepare(self.x[start : start + self.chunk_rows])

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        return self.prepare(self.x[idx.to(self.x.device)])

    def weights(self, start: int, n: int) -> torch.Tensor | None:
        """The sample weights of rows start .. start + n - 1 on the device, or None (all 1)."""
        return None if self.w is None else self.w[start : start + n]


def sq_distance_from(values: torch.Tensor, metric: str) -> torch.Tensor:
    """Assignment values -> squared L2 distance (for cosine: between the unit vectors)."""
    return (2.0 - 2.0 * values).clamp_min_(0.0) if metric == "cosine" else values


def global_rows(data: Data, comm: Comm, idx: torch.Tensor, offset: int) -> torch.Tensor:
    """Rows at global indices ``idx`` (same order on every rank), from whichever rank holds them."""
    if comm.dist is None:
        return data.rows(idx)
    local = (idx >= offset) & (idx < offset + data.n)
    out = torch.zeros(idx.numel(), data.d, dtype=torch.float32, device=data.device)
    if local.any():
        out[local] = data.rows(idx[local] - offset)
    return comm.sum_(out)


def tolerance(data: Data, comm: Comm, tol: float) -> float:
    """scikit-learn's relative tolerance: tol × mean per-feature variance of the (prepared) data.
    Per-chunk float32 moments, combined in float64 (and across ranks)."""
    stats = torch.zeros(3, data.d, dtype=torch.float64, device=data.device)  # count, Σx, Σx²
    for _, xc in data.chunks():
        var, mean = torch.var_mean(xc, dim=0, unbiased=False)
        n = xc.shape[0]
        stats[0] += n
        stats[1] += mean.double() * n
        stats[2] += (var.double() + mean.double().pow(2)) * n
    comm.sum_(stats)
    n = float(stats[0, 0]) if data.d else 0.0
    if n <= 1:
        return 0.0
    return float(tol * (stats[2] / n - (stats[1] / n).pow(2)).clamp_min(0).mean())


def _reseed_empty(data, comm, sums, weight, labels, dist) -> None:
    """Each empty cluster (no weight) takes the point of the heaviest cluster farthest from its
    centroid (which splits that cluster at the next assignment); chosen across ranks, ties to the
    lowest rank. Points of weight 0 are never chosen."""
    dist = dist.clone()
    if data.w is not None:
        dist[data.w <= 0] = -1.0
    for e in (weight <= 0).nonzero().flatten().tolist():
        big = int(torch.argmax(weight))
        member = torch.where(labels == big, dist, torch.full_like(dist, -1.0))
        local_best = int(torch.argmax(member)) if member.numel() else -1
        best_val = float(member[local_best]) if local_best >= 0 else -1.0
        cand = torch.tensor([best_val, -comm.rank], dtype=torch.float64, device=sums.device)
        all_cands = [torch.zeros_like(cand) for _ in range(comm.world)]
        if comm.dist is not None:
            comm.dist.all_gather(all_cands, cand)
        else:
            all_cands = [cand]
        winner = max(range(comm.world), key=lambda r: (float(all_cands[r][0]), float(all_cands[r][1])))
        row = torch.zeros(data.d + 1, dtype=torch.float64, device=sums.device)  # weight · point, weight
        if winner == comm.rank:
            w = 1.0 if data.w is None else float(data.w[local_best])
            row[:-1] += w * data.rows(torch.tensor([local_best]))[0].double()
            row[-1] = w
            dist[local_best] = -1.0
        comm.sum_(row)
        sums[big] -= row[:-1]
        sums[e] = row[:-1]
        weight[big] -= row[-1]
        weight[e] = row[-1]


def distances(data: Data, centers: torch.Tensor, assign: Assign, metric: str, labels: torch.Tensor,
              dist: torch.Tensor) -> torch.Tensor:
    """Assign every row with its value: fills ``labels`` and ``dist`` (squared distances); returns
    their local sum, float64 (1,)."""
    total = torch.zeros(1, dtype=torch.float64, device=data.device)
    for start, xc in data.chunks():
        lab, val = assign(start, xc, centers, True)
        labels[start : start + len(lab)] = lab
        dist[start : start + len(lab)] = sq_distance_from(val, metric)
        w = data.weights(start, len(lab))
        d = dist[start : start + len(lab)].double()
        total += (d if w is None else d * w.double()).sum()
    return total


def lloyd(data: Data, centers: torch.Tensor, assign: Assign, *, metric: str, max_iter: int, tol: float,
          comm: Comm, progress: bool = False) -> LloydResult:
    """Iterate assign/update until no label changes on any rank or the squared centre shift is <= tol.

    Iterations need labels only; distances are computed when an empty cluster must be re-seeded and
    once at the end (inertia)."""
    k = centers.shape[0]
    labels = torch.full((data.n,), -1, dtype=torch.int64, device=data.device)
    dist = torch.zeros(data.n, dtype=torch.float32, device=data.device)
    n_iter = 0
    bar = progress_bar(total=max_iter, desc="k-means", unit="it", progress=progress and comm.rank == 0, leave=False)
    for n_iter in range(1, max_iter + 1):
        sums = torch.zeros(k, data.d, dtype=torch.float64, device=data.device)
        weight = torch.zeros(k, dtype=torch.float64, device=data.device)  # points per cluster, or their weight
        changed = torch.zeros(1, dtype=torch.int64, device=data.device)
        for start, xc in data.chunks():
            lab, _ = assign(start, xc, centers, False)
            changed += (labels[start : start + len(lab)] != lab).sum()
            labels[start : start + len(lab)] = lab
            w = data.weights(start, len(lab))
            # float32 sums per chunk (no float64 copy of X each iteration), accumulated in float64
            rows = xc if w is None else xc * w[:, None]
            sums += torch.zeros(k, data.d, dtype=torch.float32, device=data.device).index_add_(0, lab, rows).double()
            weight += (torch.bincount(lab, minlength=k) if w is None else
                       torch.zeros(k, dtype=torch.float64, device=data.device).index_add_(0, lab, w.double()))
        comm.sum_(sums)
        comm.sum_(weight)
        comm.sum_(changed)
        if (weight <= 0).any():
            distances(data, centers, assign, metric, labels, dist)  # same labels, now with distances
            _reseed_empty(data, comm, sums, weight, labels, dist)
        new = torch.where(weight[:, None] > 0, sums / weight.clamp_min(1e-300).unsqueeze(1), centers.double()).float()
        if metric == "cosine":
            new = torch.nn.functional.normalize(new, dim=1)
        shift = float((new - centers).pow(2).sum())
        centers = new
        bar.update(1)
        if n_iter > 1 and int(changed) == 0:
            break
        if shift <= tol:
            break
    bar.close()
    inertia = distances(data, centers, assign, metric, labels, dist)  # labels consistent with the final centres
    comm.sum_(inertia)
    return LloydResult(centers, labels, float(inertia), n_iter)
