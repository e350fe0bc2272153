"""The selection and pruning decisions of one stage, as plain functions (DESIGN §2 steps 3–4, 7)."""

from __future__ import annotations

import random
from typing import Any, Mapping, Sequence

import torch

from ..ops.dedup import _check_eps, cluster_max_similarity, prune_to_budget, semdedup, semdedup_order
from .budget import split_budget
from . import release
from .ccs import ccs_sample
from .selector import choose_selectors

RULES = ("adaptinf", "release")


def selection_scores(scores: Mapping[str, torch.Tensor], names: Sequence[str]) -> dict[str, torch.Tensor]:
    """The scores used for selection, in ``names`` order; ppl enters as log ppl (as the release)."""
    out = {}
    for name in names:
        if name in scores:
            v = scores[name].double()
            out[name] = v.clamp_min(1e-12).log() if name == "ppl" else v
    return out


def select_subset(features: torch.Tensor, labels: torch.Tensor, scores: Mapping[str, torch.Tensor], *,
                  method: str, budget: int, generator: torch.Generator, score_order: Sequence[str] = (),
                  eps: float = 0.05, device: Any = None, max_rows: int | None = None
                  ) -> tuple[torch.Tensor, dict[str, Any]]:
    """Indices of the training subset and what decided it.

    ``method``: ``"adaptinf"`` (selector per cluster by entropy, budget per cluster, CCS),
    ``"score:<name>"`` (that score everywhere), ``"random"``, ``"full"``, ``"semdedup"`` (random
    among the samples SemDeDup keeps at ``eps``; ``max_rows``: its rows resident at once, as in
    ``prune_mask``). ``budget`` is capped at the number of samples.
    """
    n = features.shape[0]
    budget = min(budget, n)
    info: dict[str, Any] = {}
    if method == "full":
        return torch.arange(n), info
    if method == "random":
        return torch.sort(torch.randperm(n, generator=generator)[:budget]).values, info
    if method == "semdedup":
        kept = semdedup(features, labels, eps=eps, order="hard", device=device, max_rows=max_rows).cpu().nonzero().flatten()
        info["semdedup_kept"] = int(kept.numel())
        return torch.sort(kept[torch.randperm(kept.numel(), generator=generator)[:budget]]).values, info
    sel = selection_scores(scores, score_order or list(scores))
    if not sel:
        raise ValueError(f"none of the scores {list(score_order)} are available")
    uniq, dense = torch.unique(labels, return_inverse=True)
    shares = split_budget(torch.bincount(dense), budget)
    if method == "adaptinf":
        selectors = choose_selectors(sel, labels, order=list(sel))
    elif method.startswith("score:") and method[6:] in sel:
        selectors = {int(c): method[6:] for c in uniq.tolist()}
    else:
        raise ValueError(f"method {method!r} needs a score that was not computed")
    parts = []
    for c, share in zip(uniq.tolist(), shares.tolist()):
        members = (labels == c).nonzero().flatten()
        parts.append(members[ccs_sample(sel[selectors[c]][members], share, generator)])
    info["selectors"] = {str(c): s for c, s in selectors.items()}
    info["budgets"] = {str(c): int(s) for c, s in zip(uniq.tolist(), shares.tolist())}
    return torch.sort(torch.cat(parts)).values, info


def release_subset(features: torch.Tensor, labels: torch.Tensor, scores: Mapping[str, torch.Tensor], *,
                   method: str, budget: int, k: int, seed: int, pool_budget: int | None = None,
                   progress: bool = False, device: Any = None, max_rows: int | None = None
                   ) -> tuple[torch.Tensor, dict[str, Any]]:
    """``select_subset`` under ``rules="release"``: the release's selection, ids for ids.

    As the release's script with ``--semdedup`` does, a pool larger than ``pool_budget`` is first
    pruned by its rule (``release.prune``) and the subset is chosen from the kept samples, in the
    kept order; ``pool_budget=None`` selects from the whole pool. Its Python ``random`` calls are
    made on ``random.Random(seed)`` (the release's script after ``random.seed(seed)``).
    ``method``: ``"adaptinf"`` (its ``--mwp``) or ``"score:<name>"`` (its ``--score-type``).
    ``labels`` must lie in [0, k). Returns (sorted indices, info).
    """
    n = features.shape[0]
    order = torch.arange(n)
    info: dict[str, Any] = {"rules": "release"}
    if pool_budget is not None and n > pool_budget:
        kept, _ = release.prune(features, labels, k, pool_budget, progress=progress, device=device, max_rows=max_rows)
        order = torch.from_numpy(kept)
        info["selected_from"] = int(kept.size)
    sel = release.scores_as_release(scores)
    if not sel:
        raise ValueError("no scores are available")
    if method == "adaptinf":
        score = None
    elif method.startswith("score:") and method[6:] in sel:
        score = method[6:]
    else:
        raise ValueError(f"method {method!r} under rules='release': expected 'adaptinf' or score:<a computed score>")
    picked, extra = release.select(labels[order], {name: v[order.numpy()] for name, v in sel.items()}, k, budget,
                                   random.Random(seed), score=score)
    info.update(extra)
    return torch.sort(order[torch.from_numpy(picked)]).values, info


def prune_mask(features: Any, labels: torch.Tensor, *, mode: str, pool_budget: int | None = None,
               eps: float = 0.05, progress: bool = False, rules: str = "adaptinf", k: int | None = None,
               max_rows: int | None = None, distributed: bool = False, device: Any = None) -> torch.Tensor:
    """Bool mask of samples to drop for good: ``"budget"`` (Adapt-∞: keep the ``pool_budget`` least
    redundant, split over clusters), ``"threshold"`` (SemDeDup at ``eps``) or ``"none"``. Both use
    SemDeDup's "hard" order (farthest from the centroid first).

    ``rules="release"`` (budget mode only, ``k`` clusters with labels in [0, k)): the release's
    semdedup (index order, M clamped at 0, its rounded-up budgets), and only when the pool holds
    more than ``pool_budget``: at or under it nothing is dropped (the release's budget split fails
    on a budget its clusters cannot hold).

    ``features``: (N, D) tensor or ``FeatureView`` (read a group of clusters at a time, at most
    ``max_rows`` rows resident); ``distributed``: split the clusters over the ranks of an
    initialised process group (every rank gets the same mask); ``device``: where to compute.
    """
    stream = {"max_rows": max_rows, "distributed": distributed, "device": device}
    if rules not in RULES:
        raise ValueError(f"rules is {rules!r}; expected one of {RULES}")
    if mode == "none":
        return torch.zeros(features.shape[0], dtype=torch.bool)
    if rules == "release":
        if mode != "budget":
            raise ValueError(f"rules='release' prunes only to a pool budget (the release has no {mode!r} mode)")
        drop = torch.zeros(features.shape[0], dtype=torch.bool)
        if features.shape[0] > pool_budget:
            drop[:] = True
            drop[torch.from_numpy(release.prune(features, labels, k, pool_budget, progress=progress, **stream)[0])] = False
        return drop
    order = semdedup_order(features, labels, "hard", chunk_rows=max_rows).cpu()
    m, _ = cluster_max_similarity(features, labels, order=order, progress=progress, **stream)
    if mode == "budget":
        return ~prune_to_budget(m, labels, pool_budget, order=order).cpu()
    if mode == "threshold":
        return (m > 1.0 - _check_eps(eps)[0]).cpu()  # SemDeDup drops j when M_j > 1 - eps
    raise ValueError(f"prune mode {mode!r}; expected 'budget', 'threshold' or 'none'")
