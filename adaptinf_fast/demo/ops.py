"""``adaptinf-fast demo-ops``: the three ops on built-in synthetic "gradients" with planted redundancy.

The selection pipeline's kernels end to end, at a size the lifelong demo does not reach: project
long per-sample vectors, cluster them into pseudo-skills, then find and prune the planted
near-duplicates — printing what was kept and how long each step took.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .._io import progress_bar
from .. import KMeans, cluster_max_similarity, project, prune_to_budget, semdedup_order


@dataclass
class DemoConfig:
    n_unique: int = 3000
    n_duplicates: int = 1000
    in_dim: int = 32768
    out_dim: int = 512
    n_skills: int = 8
    eps: float = 0.05
    pool_budget: int = 2500
    seed: int = 0
    batch: int = 500


def make_gradients(cfg: DemoConfig):
    """Synthetic per-sample "gradients": n_skills directions plus noise; the last n_duplicates rows
    are near-copies (1% noise) of earlier rows. Returns (x float32 (N, P), skill, source index or -1)."""
    g = torch.Generator().manual_seed(cfg.seed)
    skills = torch.randn(cfg.n_skills, cfg.in_dim, generator=g)
    skill = torch.randint(0, cfg.n_skills, (cfg.n_unique,), generator=g)
    base = skills[skill] + 1.5 * torch.randn(cfg.n_unique, cfg.in_dim, generator=g)
    src = torch.randint(0, cfg.n_unique, (cfg.n_duplicates,), generator=g)
    dups = base[src] + 0.01 * base[src].norm(dim=1, keepdim=True) / cfg.in_dim**0.5 * torch.randn(
        cfg.n_duplicates, cfg.in_dim, generator=g)
    x = torch.cat([base, dups])
    source = torch.cat([torch.full((cfg.n_unique,), -1), src])
    return x, torch.cat([skill, skill[src]]), source


def run(cfg: DemoConfig, out_dir: Path | None = None) -> dict:
    times: dict[str, float] = {}

    def tick(name: str, t0: float) -> None:
        times[name] = time.perf_counter() - t0

    t0 = time.perf_counter()
    x, skill, source = make_gradients(cfg)
    n = x.shape[0]
    tick("make data", t0)
    print(f"pool: {n} samples of dimension {cfg.in_dim} ({cfg.n_duplicates} planted near-duplicates)")

    t0 = time.perf_counter()
    feats = torch.zeros(n, cfg.out_dim)
    for r0 in progress_bar(range(0, n, cfg.batch), desc="project", unit="batch"):
        project(x[r0 : r0 + cfg.batch], cfg.out_dim, seed=cfg.seed, out=feats[r0 : r0 + cfg.batch])
    feats = torch.nn.functional.normalize(feats, dim=1)
    tick("project", t0)

    t0 = time.perf_counter()
    km = KMeans(cfg.n_skills, metric="cosine", seed=cfg.seed, n_init=2, progress=True).fit(feats)
    tick("cluster", t0)
    purity = sum(int(torch.bincount(skill[km.labels_ == c]).max()) for c in km.labels_.unique()) / n

    t0 = time.perf_counter()
    order = semdedup_order(feats, km.labels_, "hard")
    max_sim, _ = cluster_max_similarity(feats, km.labels_, order=order)
    tick("max similarity", t0)

    t0 = time.perf_counter()
    dropped = max_sim > 1 - cfg.eps
    keep = prune_to_budget(max_sim, km.labels_, cfg.pool_budget, order=order)
    tick("prune", t0)

    # A planted duplicate group {source, copies...} is "caught" if exactly one member survives.
    group = torch.where(source >= 0, source, torch.arange(n))
    dup_groups = group[source >= 0].unique()
    survivors = torch.bincount(group[~dropped], minlength=n)[dup_groups]
    budget_survivors = torch.bincount(group[keep], minlength=n)[dup_groups]
    summary = {
        "config": asdict(cfg),
        "pool_size": n,
        "cluster_sizes": torch.bincount(km.labels_, minlength=cfg.n_skills).tolist(),
        "cluster_purity": round(purity, 4),
        "semdedup_dropped": int(dropped.sum()),
        "planted_groups_left_with_one_copy": f"{int((survivors == 1).sum())}/{len(dup_groups)}",
        "budget_kept": int(keep.sum()),
        "budget_groups_with_several_copies": int((budget_survivors > 1).sum()),
        "seconds": {k: round(v, 3) for k, v in times.items()},
    }
    print(f"\nclusters (K={cfg.n_skills}, cosine): sizes {summary['cluster_sizes']}, purity {purity:.3f}")
    print(f"SemDeDup eps={cfg.eps}: dropped {summary['semdedup_dropped']} of {n}; "
          f"planted duplicate groups reduced to one copy: {summary['planted_groups_left_with_one_copy']}")
    print(f"Adapt-∞ pruning to a pool of {cfg.pool_budget}: kept {summary['budget_kept']}, "
          f"planted groups still holding more than one copy: {summary['budget_groups_with_several_copies']}")
    print("time per step: " + ", ".join(f"{k} {v:.2f}s" for k, v in times.items()))
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        print(f"wrote {out_dir / 'summary.json'}")
    return summary
