"""The Adapt-∞ release's selection rules as its public source states them, loop for loop.

An independent oracle for ``rules="release"``: written for the tests from a reading of
``data_selection/adapt-inf.py`` (adymaharana/adapt-inf), deliberately unvectorised — per-element
Python comparisons, per-bin list comprehensions, a dense n×n similarity matrix per cluster — so it
shares no code and no shortcut with ``adaptinf_fast.selection.release``.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def dist_entropy(x, nbins=50):
    x = np.nan_to_num(x)
    with np.errstate(divide="ignore", invalid="ignore"):
        sd = np.std(x)
        x = (x - np.mean(x)) / sd
        counts = np.zeros(nbins)
        edges = np.linspace(-4 * sd, 4 * sd, nbins)
        for i in range(1, nbins):
            counts[i] = np.sum((x > edges[i - 1]) & (x <= edges[i]))
        p = counts / np.sum(counts)
        p = np.where(p == 0, np.finfo(float).eps, p)
        p = np.nan_to_num(p)
        return -np.sum(p * np.log2(p))


def mwp_name(scores, idxs):
    keys = list(scores.keys())
    ent = [dist_entropy(scores[k][idxs]) for k in keys]
    return keys[np.argmax(ent)]


def budget_split(sizes, total, k):
    if np.min(sizes) * k >= total:
        return [math.ceil(total / k)] * k
    got = []
    order = np.argsort(sizes)
    share = math.ceil(total / k)
    for i in range(k):
        s = sizes[order[i]]
        if s < share:
            got.append(s)
            share = share + math.ceil((share - s) / (k - i - 1))  # ZeroDivisionError as the release
        else:
            got.append(share)
    return [got[j] for j in np.argsort(order)]


def ccs_release(scores, bins, budget, rng):
    ordered = np.sort(scores)
    low, high = ordered[int(len(ordered) * 0.05)], ordered[int(len(ordered) * 0.95)]
    right = high
    remaining = budget
    budget = math.ceil(budget / bins)
    out = []
    for i in range(bins):
        left = right - ((high - low) / bins)
        cands = [j for j, s in enumerate(scores) if s > left and s <= right]
        if len(cands) < budget:
            out.extend(cands)
            if (i + 1) < bins:
                budget = math.ceil((remaining - len(cands)) / (bins - (i + 1)))
                remaining -= len(cands)
        else:
            out.extend(rng.sample(cands, k=budget))  # ValueError for a negative quota, as the release
            remaining -= budget
        right = left
    return np.array(out, dtype=np.int64)


def semdedup_release(emb, labels, k, keep):
    sizes = [np.where(labels == i)[0].shape[0] for i in range(k)]
    shares = budget_split(sizes, keep, k)
    idxs, ms = [], []
    for i in range(k):
        ci = np.where(labels == i)[0]
        e = torch.nn.functional.normalize(torch.tensor(emb[ci]).type(torch.float32), p=2, dim=-1)
        m = torch.max(torch.triu(e @ e.T, diagonal=1), dim=0)[0]
        idxs.append(ci[torch.argsort(m)[: shares[i]].numpy()])
        ms.append(m)
    return np.concatenate(idxs), torch.cat(ms).numpy()


def load_scores_release(scores):
    """dict name -> float32 numpy, ppl logged, as ``load_scores`` (order: the dict's)."""
    out = {k: np.asarray(v, dtype=np.float32) for k, v in scores.items()}
    if "ppl" in out:
        out["ppl"] = np.log(out["ppl"])
    return out


def release_main(labels, scores, k, budget, rng, *, emb=None, keep=None, score_type=None):
    """``--kmeans [--semdedup] --select --ccs`` with ``--mwp`` (score_type None) or ``--score-type``.
    Returns (selected original positions in the release's order, kept original positions or None)."""
    positions = np.arange(len(labels))
    kept = None
    if keep is not None:
        kept, _ = semdedup_release(emb, labels, k, keep)
        scores = {n: v[kept] for n, v in scores.items()}
        labels = labels[kept]
        positions = positions[kept]
    for i in range(k):
        ci = np.where(labels == i)[0].tolist()
        rng.sample(ci, k=10)
    shares = budget_split([np.where(labels == i)[0].shape[0] for i in range(k)], budget, k)
    out = []
    for i in range(k):
        ci = np.where(labels == i)[0]
        s = scores[mwp_name(scores, ci)][ci] if score_type is None else scores[score_type][ci]
        out.extend(positions[ci[ccs_release(s, 50, shares[i], rng)]].tolist())
    return np.array(out, dtype=np.int64), kept
