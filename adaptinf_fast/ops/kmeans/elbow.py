"""Elbow helper: k-means inertia for several K in one call, as a table and a matplotlib plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ..._io import progress_bar



def elbow(x: Any, ks: Sequence[int], *, metric: str = "cosine", n_init: int = 1, seed: int = 0,
          backend: str = "auto", progress: bool = True) -> list[dict]:
    """[{"k", "inertia", "n_iter"}] for each K (fits share nothing but the data and the seed)."""
    from . import KMeans

    rows = []
    for k in progress_bar(list(ks), desc="elbow", unit="K", progress=progress):
        km = KMeans(int(k), metric=metric, n_init=n_init, seed=seed, backend=backend).fit(x)
        rows.append({"k": int(k), "inertia": float(km.inertia_), "n_iter": int(km.n_iter_)})
    return rows


def format_elbow(rows: list[dict]) -> str:
    lines = [f"{'K':>6} {'inertia':>14} {'iters':>6}"]
    lines += [f"{r['k']:>6} {r['inertia']:>14.6g} {r['n_iter']:>6}" for r in rows]
    return "\n".join(lines)


def plot_elbow(rows: list[dict], path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot([r["k"] for r in rows], [r["inertia"] for r in rows], marker="o")
    ax.set(xlabel="K (clusters)", ylabel="inertia", title="k-means elbow")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
