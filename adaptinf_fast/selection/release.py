"""The Adapt-∞ release's selection rules, reproduced decision for decision (DESIGN §7, ``rules="release"``).

Read from the public release (``data_selection/adapt-inf.py``), written anew and vectorised. Each
function makes the same comparisons in the same NumPy dtypes and the same Python ``random`` calls
in the same order as the release, so on the same features, scores and seed it returns the same ids.
Where our own rules differ, the README's table "Where we differ from the release" says how and why.

- ``entropy``: z-score, then a histogram with edges ``linspace(-4σ, 4σ, 50)`` of the *raw* σ
  (so the range depends on each score's scale), counting only values in ``(edge[i-1], edge[i]]``
  (values outside are dropped), empty bins as machine epsilon; zero spread gives NaN, and NaN
  wins ``np.argmax`` — a zero-spread score is chosen.
- ``budgets``: ceil shares over clusters sorted by size; the total may exceed B.
- ``ccs``: thresholds ``sorted[int(0.05 n)]`` / ``sorted[int(0.95 n)]``, 50 bins walked from the
  top with ``left < s <= right`` (``left`` accumulated by subtraction), quota ``ceil(B / 50)``
  recomputed only after a short bin, ``random.sample`` per full bin, no refill.
- ``prune`` (the release's ``semdedup``): clusters in index order, M = column max of the strict
  upper triangle (so clamped at 0), keep ``argsort(M)[:budget_c]``.
- ``select``: before choosing, the release draws ``random.sample(cluster, k=10)`` per cluster for
  a printout; those draws move the random stream and are made here too.

Parity follows NumPy >= 2 promotion (NEP 50): under NumPy 1 the release compared bin edges in
other dtypes. M comes from our kernel, so a cut that falls between two M values within float32
rounding of each other may order them differently from the release's dense matmul.
"""

from __future__ import annotations

import math
import random
from typing import Any, Mapping, Sequence

import numpy as np
import torch

PREVIEW = 10  # the release prints random.sample(cluster, k=10) per cluster before selecting
BINS = 50
# The order of the release's score file (collect_grads inserts entropy, grand, el2n, ppl, ig):
# np.argmax over the entropies breaks ties (and NaNs) by this order.
SCORE_ORDER = ("entropy", "grand", "el2n", "ppl", "ig")


class ReleaseCrash(ValueError):
    """The release raises an exception on this input; ``rules="adaptinf"`` handles it."""


_NUMPY_2 = int(np.__version__.split(".")[0]) >= 2


def _numpy_floor() -> None:
    """Refuse to run where the bin-edge comparisons would promote differently (NumPy 1)."""
    if not _NUMPY_2:
        raise RuntimeError(f"rules='release' reproduces the release under NumPy >= 2 promotion rules; "
                           f"NumPy {np.__version__} compares its bin edges in other dtypes")


def entropy(values: Any, nbins: int = BINS) -> float:
    """The release's ``get_dist_entropy``: entropy (bits) of its histogram of the z-scored values.

    Args:
        values: (n,) scores in their stored dtype (the release's are float32); NaN counts as 0.

    Returns:
        float; NaN when the values have no spread or no value falls inside the edges.
    """
    _numpy_floor()
    x = np.nan_to_num(np.asarray(values))
    with np.errstate(divide="ignore", invalid="ignore"):
        std = np.std(x)
        z = (x - np.mean(x)) / std
        edges = np.linspace(-4 * std, 4 * std, nbins)
        # bin i (1 <= i < nbins) holds edges[i-1] < z <= edges[i]: searchsorted(side="left") gives
        # exactly that i, in the dtype the release's scalar comparisons promote to.
        dt = np.result_type(z.dtype, edges.dtype)
        where = np.searchsorted(edges.astype(dt), z.astype(dt), side="left")
        inside = (where >= 1) & (where < nbins) & ~np.isnan(z)
        counts = np.bincount(where[inside], minlength=nbins).astype(np.float64)
        p = counts / np.sum(counts)
        p = np.where(p == 0, np.finfo(float).eps, p)
        p = np.nan_to_num(p)
        return float(-np.sum(p * np.log2(p)))


def choose_selector(scores: Mapping[str, np.ndarray], members: np.ndarray) -> str:
    """The release's ``get_mwp_score`` choice: the score (in ``scores``' order) with the largest
    ``entropy`` over ``members``; ``np.argmax``: the first maximum, or the first NaN."""
    names = list(scores)
    return names[int(np.argmax([entropy(scores[n][members]) for n in names]))]


def budgets(sizes: Sequence[int], total: int, n_clusters: int | None = None) -> list[int]:
    """The release's ``assign_budget_to_cluster`` (unweighted): budget per cluster.

    When the smallest cluster times K covers the total, every cluster gets ceil(total / K);
    otherwise clusters are taken smallest first, each getting the running share (ceil(total / K)
    to start), a cluster smaller than it taken whole and the share raised by
    ceil(shortfall / clusters left). Shares are rounded up, so they may sum to more than ``total``.

    Raises:
        ReleaseCrash: where the release divides by zero (its largest cluster is smaller than the
            running share: the clusters cannot hold the total).
    """
    sizes = [int(s) for s in sizes]
    k = len(sizes) if n_clusters is None else int(n_clusters)
    if k != len(sizes) or k == 0:
        raise ValueError(f"{len(sizes)} cluster sizes for n_clusters={k}")
    if np.min(sizes) * k >= total:
        return [math.ceil(total / k)] * k
    order = np.argsort(sizes)
    share, out = math.ceil(total / k), []
    for i in range(k):
        size = sizes[order[i]]
        if size < share:
            if i == k - 1:
                raise ReleaseCrash(
                    f"the release's budget split divides by zero here: its largest cluster ({size} samples) is "
                    f"smaller than its running share ({share}), so clusters of sizes {sizes} cannot hold "
                    f"{total}; rules='adaptinf' gives every cluster at most its size and sums to min(B, N)")
            out.append(size)
            share = share + math.ceil((share - size) / (k - i - 1))
        else:
            out.append(share)
    inverse = np.argsort(order)
    return [out[j] for j in inverse]


def weighted_budgets(sizes: Sequence[int], total: int, n_clusters: int, spread: Any, labels: Any) -> list:
    """The release's ``assign_budget_to_cluster(..., score_weighted=True)``: shares proportional to
    each cluster's std of ``spread`` (its el2n scores), floored; clusters (smallest first) smaller
    than their share are taken whole and their excess share spread over the larger ones."""
    spread, labels = np.nan_to_num(np.asarray(spread)), np.asarray(labels)
    probs = [np.std(spread[np.flatnonzero(labels == c)]) for c in range(n_clusters)]
    norm = sum(probs)
    probs = [p / norm for p in probs]
    out = [int(p * total) for p in probs]
    order = np.argsort(sizes)
    with np.errstate(divide="ignore", invalid="ignore"):  # the last cluster's excess goes nowhere
        for i, c in enumerate(order):
            if sizes[c] < out[c]:
                excess = (probs[c] - sizes[c] / total) / (n_clusters - i - 1)
                for later in order[i + 1:]:
                    probs[later] += excess
                    out[later] = int(probs[later] * total)
                out[c] = sizes[c]
    return out


def thresholds(values: np.ndarray) -> tuple[Any, Any]:
    """The release's ``set_outlier_threshold``: (sorted[int(0.05 n)], sorted[int(0.95 n)])."""
    s = np.sort(values)
    return s[int(len(s) * 0.05)], s[int(len(s) * 0.95)]


def ccs(values: Any, bins: int, budget: int, rng: Any = random) -> np.ndarray:
    """The release's ``get_ccs_samples``: positions into ``values``, in its order (bins from the top).

    Args:
        values: (n,) the cluster's chosen score, n >= 1, in the release's dtype (float32).
        bins: number of bins (the release passes 50). budget: samples wanted (an int).
        rng: a ``random.Random`` (default the ``random`` module, as the release).

    Returns:
        int64 positions: ceil(budget / bins) per full bin, so up to bins·ceil(budget / bins).

    Raises:
        ReleaseCrash: where the release's quota turns negative and ``random.sample`` refuses it.
    """
    _numpy_floor()
    values = np.asarray(values)
    if values.size == 0:
        raise ReleaseCrash("the release's CCS indexes the sorted scores of an empty cluster; "
                           "rules='adaptinf' skips empty clusters")
    low, high = thresholds(values)
    right, remaining, quota = high, budget, math.ceil(budget / bins)
    picked: list[int] = []
    for i in range(bins):
        left = right - ((high - low) / bins)
        candidates = np.flatnonzero((values > left) & (values <= right)).tolist()
        if len(candidates) < quota:
            picked.extend(candidates)
            if i + 1 < bins:
                quota = math.ceil((remaining - len(candidates)) / (bins - (i + 1)))
                remaining -= len(candidates)
        else:
            if quota < 0:
                raise ReleaseCrash(
                    f"the release's CCS fails here: its per-bin quota ceil(B/{bins}) overdraws a budget of {budget} "
                    f"and turns negative ({quota}), which random.sample rejects; rules='adaptinf' recomputes "
                    f"the quota per bin and never exceeds the budget")
            picked.extend(rng.sample(candidates, k=quota))
            remaining -= quota
        right = left
    return np.array(picked, dtype=np.int64)


def prune(features: Any, labels: Any, n_clusters: int, keep: int, *, progress: bool = False,
          backend: str = "auto", max_rows: int | None = None, distributed: bool = False,
          device: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """The release's ``semdedup`` pruning to ``keep`` samples, on our max-similarity kernel.

    Args:
        features: (N, D) float tensor or ``FeatureView``; rows are L2-normalised in float32.
        labels: (N,) ints in [0, K). max_rows, distributed, device: as in ``cluster_max_similarity``.

    Returns:
        (kept positions int64, in the release's order: cluster by cluster, each in ascending-M
        order; M float32 (N,) in that same cluster-by-cluster layout, as the release returns it).

    Raises:
        ReleaseCrash: on an empty cluster or a keep budget the release's budget split fails on.
    """
    from ..ops.dedup import cluster_max_similarity

    labels_np = np.asarray(torch.as_tensor(labels).cpu().numpy(), dtype=np.int64)
    members = [np.flatnonzero(labels_np == c) for c in range(n_clusters)]
    empty = [c for c, m in enumerate(members) if m.size == 0]
    if empty:
        raise ReleaseCrash(f"the release's semdedup fails on empty cluster(s) {empty} (max over an empty "
                           f"similarity matrix); rules='adaptinf' skips them")
    shares = budgets([m.size for m in members], keep, n_clusters)
    m_all, _ = cluster_max_similarity(features, torch.as_tensor(labels_np), backend=backend, progress=progress,
                                      max_rows=max_rows, distributed=distributed, device=device)
    m_all = m_all.cpu().clamp_min(0.0)  # the zeroed lower triangle floors M at 0 (first sample: 0)
    kept, ms = [], []
    for c, idx in enumerate(members):
        m = m_all[torch.from_numpy(idx)]
        kept.append(idx[torch.argsort(m)[: shares[c]].numpy()])
        ms.append(m)
    return np.concatenate(kept), torch.cat(ms).numpy()


def scores_as_release(scores: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Scores as the release's ``load_scores`` gives them: in its file order, float32, ppl as log ppl."""
    out = {}
    for name in [n for n in SCORE_ORDER if n in scores] + [n for n in scores if n not in SCORE_ORDER]:
        v = np.asarray(torch.as_tensor(scores[name]).detach().cpu().numpy(), dtype=np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):
            out[name] = np.log(v) if name == "ppl" else v
    return out


def select(labels: Any, scores: Mapping[str, np.ndarray], n_clusters: int, budget: int, rng: random.Random, *,
           score: str | None = None, bins: int = BINS) -> tuple[np.ndarray, dict[str, Any]]:
    """The release's ``--kmeans --select --ccs`` with ``--mwp`` (``score=None``) or ``--score-type``.

    Args:
        labels: (N,) cluster ids in [0, K), in the release's row order (after its pruning, if any).
        scores: name -> (N,) as ``scores_as_release`` gives them (its order breaks entropy ties).
        rng: the ``random.Random`` standing for the release's ``random`` module.

    Returns:
        (selected positions int64 in the release's order, {"selectors", "budgets"}).

    Raises:
        ReleaseCrash: a cluster of fewer than 10 samples (the release's preview draw), or the
            budget split or CCS failing as in the release.
    """
    labels_np = np.asarray(torch.as_tensor(labels).cpu().numpy(), dtype=np.int64)
    members = [np.flatnonzero(labels_np == c) for c in range(n_clusters)]
    for c, idx in enumerate(members):
        if idx.size < PREVIEW:
            raise ReleaseCrash(f"the release draws random.sample(cluster, k={PREVIEW}) from every cluster before "
                               f"selecting and fails on cluster {c} of {idx.size} samples; rules='adaptinf' makes no such draw")
        rng.sample(idx.tolist(), k=PREVIEW)
    shares = budgets([m.size for m in members], budget, n_clusters)
    chosen, selectors = [], {}
    for c, idx in enumerate(members):
        name = score if score is not None else choose_selector(scores, idx)
        selectors[str(c)] = name
        chosen.append(idx[ccs(scores[name][idx], bins, shares[c], rng)])
    return np.concatenate(chosen), {"selectors": selectors, "budgets": {str(c): int(s) for c, s in enumerate(shares)}}
