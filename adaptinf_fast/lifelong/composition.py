"""What a stage's clusters hold and what it kept, per data source (so "replay" is one glance).

Adapt-∞ gives every pseudo-skill cluster a share of the budget: old and rare skills are replayed
only if the clusters separate them. ``cluster_composition`` is the cluster × source table of one
stage (counts, each cluster's majority source and purity, and how well clusters and sources agree
overall: purity, NMI, ARI); ``source_shares`` is, per source, its share of the pool, of the
selection and of what was pruned. Both are written with the stage (``cluster.json``, the select and
prune records), printed by ``adaptinf-fast status`` and plotted.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

import numpy as np


def cluster_composition(labels: Sequence[int], sources: Sequence[str], k: int | None = None) -> dict[str, Any]:
    """The cluster × source table of samples with cluster ``labels`` and data ``sources`` (same order).

    Returns {"sources": [names, sorted], "counts": K × S ints, "sizes": K, "majority": per cluster the
    most common source (ties: the first name; None for an empty cluster), "purity": per cluster the
    majority's share (None if empty), "overall": {"purity": Σ_c max_s n_cs / N, "nmi": normalised
    mutual information (arithmetic mean), "ari": adjusted Rand index}} (NMI and ARI as scikit-learn
    computes them; 1.0 when there is a single source and a single cluster).
    """
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape[0] != len(sources):
        raise ValueError(f"{labels.shape[0]} labels but {len(sources)} sources")
    k = int(k if k is not None else (labels.max() + 1 if labels.size else 0))
    names = sorted(set(sources))
    col = {s: j for j, s in enumerate(names)}
    src = np.fromiter((col[s] for s in sources), dtype=np.int64, count=len(sources))
    counts = np.zeros((k, len(names)), dtype=np.int64)
    np.add.at(counts, (labels, src), 1)
    sizes = counts.sum(1)
    majority = [names[int(np.argmax(row))] if n else None for row, n in zip(counts, sizes)]
    purity = [round(float(row.max() / n), 4) if n else None for row, n in zip(counts, sizes)]
    n = int(sizes.sum())
    overall = {"purity": round(float(counts.max(1).sum() / n), 4) if n else None,
               "nmi": round(float(normalized_mutual_info_score(src, labels)), 4) if n else None,
               "ari": round(float(adjusted_rand_score(src, labels)), 4) if n else None}
    return {"sources": names, "counts": counts.tolist(), "sizes": sizes.tolist(), "majority": majority,
            "purity": purity, "overall": overall}


def source_shares(pool_sources: Sequence[str], picked_sources: Sequence[str]) -> dict[str, dict[str, float | int]]:
    """Per source: how many of the pool, how many picked (selected or pruned), and the two shares."""
    pool, picked = Counter(pool_sources), Counter(picked_sources)
    n_pool, n_picked = sum(pool.values()), sum(picked.values())
    return {s: {"pool": pool[s], "picked": picked[s], "pool_share": round(pool[s] / n_pool, 4) if n_pool else 0.0,
                "picked_share": round(picked[s] / n_picked, 4) if n_picked else 0.0} for s in sorted(pool)}


def format_composition(comp: dict[str, Any]) -> list[str]:
    """The table as text lines (one per cluster, then the overall agreement)."""
    names = comp["sources"]
    width = max([8] + [len(s) + 1 for s in names])
    lines = ["  cluster  size " + "".join(f"{s:>{width}}" for s in names) + "  majority (purity)"]
    for c, (row, size) in enumerate(zip(comp["counts"], comp["sizes"])):
        maj = f"{comp['majority'][c]} ({comp['purity'][c]:.2f})" if size else "empty"
        lines.append(f"  {c:>7} {size:>5} " + "".join(f"{v:>{width}}" for v in row) + f"  {maj}")
    o = comp["overall"]
    if o["purity"] is not None:
        lines.append(f"  clusters vs sources: purity {o['purity']:.3f}, NMI {o['nmi']:.3f}, ARI {o['ari']:.3f}")
    return lines


def format_shares(shares: dict[str, dict], what: str) -> str:
    """'source: pool share → selected share' for every source, on one line."""
    return f"  {what} by source: " + ", ".join(
        f"{s} {v['pool_share']:.0%} of the pool → {v['picked_share']:.0%} ({v['picked']})" for s, v in shares.items())


__all__ = ["cluster_composition", "format_composition", "format_shares", "source_shares"]
