"""Continual-learning metrics over the accuracy matrix (DESIGN §4.8).

``A[t][i]`` is the score on task i after stage t; row 0 is before any stage, and stage t (1..T)
trains on task t (0-based column t-1). With T tasks:

* MFT (mean fine-tuned): mean_i A[i][i-1] — each task right after its own stage.
* MFN (mean final): mean of the last row.
* MAA (mean average accuracy): mean over stages t of the mean of A[t][0..t-1] (tasks seen so far).
* BWT (backward transfer): mean over tasks i < T of A[T][i-1] − A[i][i-1] (negative = forgetting).
* forgetting: mean over tasks i < T of max_{i <= t < T} A[t][i-1] − A[T][i-1].
* FWT (forward transfer): mean over tasks i >= 2 of A[i-1][i-1] − A[0][i-1] (before its own stage,
  against the model before any stage).
* relative gain vs a baseline run B of the same tasks: 100 × mean_i A[T][i] / B[T][i] over tasks
  where B[T][i] > 0 (100 = as good as the baseline).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np


def _check(a) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1] + 1 or a.shape[1] < 1:
        raise ValueError(f"accuracy matrix has shape {a.shape}; expected (T + 1, T): row 0 before any stage")
    if not np.isfinite(a).all():
        raise ValueError("accuracy matrix holds NaN/Inf (a stage's evaluation is missing)")
    return a


def cl_metrics(a) -> dict[str, float]:
    a = _check(a)
    t = a.shape[1]
    diag = np.array([a[i][i - 1] for i in range(1, t + 1)])
    out = {
        "MFT": float(diag.mean()),
        "MFN": float(a[t].mean()),
        "MAA": float(np.mean([a[s][:s].mean() for s in range(1, t + 1)])),
    }
    if t > 1:
        out["BWT"] = float(np.mean([a[t][i - 1] - a[i][i - 1] for i in range(1, t)]))
        out["forgetting"] = float(np.mean([a[i:t, i - 1].max() - a[t][i - 1] for i in range(1, t)]))
        out["FWT"] = float(np.mean([a[i - 1][i - 1] - a[0][i - 1] for i in range(2, t + 1)]))
    return out


def relative_gain(a, baseline) -> float:
    a, b = _check(a), _check(baseline)
    if a.shape != b.shape:
        raise ValueError(f"runs have different shapes {a.shape} and {b.shape}")
    ok = b[-1] > 0
    if not ok.any():
        raise ValueError("the baseline scores 0 on every task: relative gain is undefined")
    return float(100.0 * np.mean(a[-1][ok] / b[-1][ok]))


def save_matrix(path: str | Path, a, tasks: Sequence[str], baselines: dict[str, np.ndarray] | None = None,
                task_metrics: dict[str, str] | None = None) -> dict:
    """Write the matrix, task names (and each task's metric), metrics and relative gains (JSON);
    return the document."""
    a = _check(a)
    doc = {"tasks": list(tasks), **({"task_metrics": task_metrics} if task_metrics else {}),
           "accuracy": a.tolist(), "metrics": cl_metrics(a),
           "relative_gain": {name: relative_gain(a, b) for name, b in (baselines or {}).items()}}
    Path(path).write_text(json.dumps(doc, indent=1))
    return doc


def plot_matrix(path: str | Path, a, tasks: Sequence[str], title: str = "accuracy after each stage") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a = _check(a)
    fig, ax = plt.subplots(figsize=(1.2 * a.shape[1] + 2, 0.8 * a.shape[0] + 1.5))
    im = ax.imshow(a, vmin=0, vmax=1, cmap="viridis")
    for (r, c), v in np.ndenumerate(a):
        ax.text(c, r, f"{v:.2f}", ha="center", va="center", color="w" if v < 0.6 else "k", fontsize=8)
    ax.set_xticks(range(a.shape[1]), list(tasks), rotation=30, ha="right")
    ax.set_yticks(range(a.shape[0]), ["before"] + [f"stage {s}" for s in range(1, a.shape[0])])
    ax.set(xlabel="task evaluated", title=title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
