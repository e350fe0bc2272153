"""Choosing K, and the feature layers, from a report you can read.

``choose_k`` clusters a random sample of the stage's features for every candidate K (spherical
k-means, as the cluster step) and reports, per K: the inertia on the sample (the elbow), the
silhouette (cosine distance, on the sample) and, when the samples' sources are known, how well the
clusters agree with them (purity, NMI, ARI). **The rule**: the largest silhouette wins, and among
the candidates within ``tolerance`` (0.02) of it the smallest K is chosen (fewer, larger clusters
when the structure does not ask for more). Sources are reported, never used to choose: Adapt-∞'s
clusters are pseudo-skills, not datasets.

``compare_layers`` does the same for the featurizer's ``layers`` choice: features of a sample of
records under each choice, clustered at one K, side by side.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from .composition import cluster_composition

AUTO_KS = tuple(range(2, 17)) + (20, 24, 32, 48, 64, 96, 128)
SAMPLE = 4000
TOLERANCE = 0.02
RULE = (f"largest silhouette on the sample; among Ks within {TOLERANCE} of it, the smallest "
        f"(candidates by default: 2..16, 20, 24, 32, 48, 64, 96, 128, up to a tenth of the sample)")


def _sample(n: int, size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=min(n, size), replace=False))


def k_rows(xs: torch.Tensor, ks: Sequence[int], *, seed: int = 0, sources: Sequence[str] | None = None,
           device: Any = None) -> list[dict]:
    """Per K: inertia, silhouette and (with sources) purity / NMI / ARI of k-means on the rows ``xs``."""
    from sklearn.metrics import silhouette_score

    from ..ops.kmeans import KMeans

    xn = torch.nn.functional.normalize(xs.float(), dim=1)
    rows = []
    for k in ks:
        # every rank holds the same sample: fitted alone, not as one shard of a larger set
        km = KMeans(int(k), metric="cosine", n_init=3, seed=seed, device=device, distributed=False).fit(xn)
        labels = km.labels_.cpu().numpy()
        distinct = len(np.unique(labels))
        sil = float(silhouette_score(xn.numpy(), labels, metric="cosine")) if 1 < distinct < len(labels) else -1.0
        row = {"k": int(k), "inertia": round(float(km.inertia_), 4), "silhouette": round(sil, 4)}
        if sources is not None:
            row.update(cluster_composition(labels, sources, int(k))["overall"])
        rows.append(row)
    return rows


def pick(rows: list[dict], tolerance: float = TOLERANCE) -> int:
    best = max(r["silhouette"] for r in rows)
    return min(r["k"] for r in rows if r["silhouette"] >= best - tolerance)


def choose_k(x: Any, ks: Sequence[int] | None = None, *, seed: int = 0, sources: Sequence[str] | None = None,
             sample: int = SAMPLE, device: Any = None) -> dict:
    """The K report on a seeded sample of ``x`` ((N, D) tensor or FeatureView): {"sample", "rule",
    "rows": [per K], "chosen"}."""
    n = x.shape[0]
    idx = _sample(n, sample, seed)
    if ks is None:
        ks = [k for k in AUTO_KS if k <= max(2, idx.size // 10)]
    ks = sorted({int(k) for k in ks})
    bad = [k for k in ks if k < 2 or k >= idx.size]
    if bad or not ks:
        raise ValueError(f"candidate K {bad or ks}: each must be in 2..{idx.size - 1} (the sample has {idx.size} rows)")
    xs = x[torch.from_numpy(idx)] if isinstance(x, torch.Tensor) else x[idx]
    rows = k_rows(xs, ks, seed=seed, sources=None if sources is None else [sources[i] for i in idx], device=device)
    return {"sample": int(idx.size), "rule": RULE, "rows": rows, "chosen": pick(rows)}


def format_k_report(report: dict) -> list[str]:
    has_sources = "nmi" in report["rows"][0]
    head = f"  {'K':>5} {'inertia':>12} {'silhouette':>11}" + (f" {'purity':>7} {'NMI':>6} {'ARI':>6}" if has_sources else "")
    lines = [head]
    for r in report["rows"]:
        mark = "  <- chosen" if r["k"] == report["chosen"] else ""
        lines.append(f"  {r['k']:>5} {r['inertia']:>12.4g} {r['silhouette']:>11.3f}"
                     + (f" {r['purity']:>7.3f} {r['nmi']:>6.3f} {r['ari']:>6.3f}" if has_sources else "") + mark)
    lines.append(f"  (sample of {report['sample']}; rule: {report['rule']})")
    return lines


def compare_layers(adapter: str, records: list[dict], sources: Sequence[str], choices: Sequence[Any], *, k: int,
                   out_dim: int = 8192, seed: int = 0, batch_size: int = 8, image_root: str | None = None,
                   progress: bool = False) -> list[dict]:
    """For each ``layers`` choice: gradient features of ``records`` from the saved adapter, clustered
    at K: silhouette and agreement with ``sources`` (one row per choice)."""
    from ..features import GradientFeaturizer
    from .models import load_peft_model

    model, tokenizer, processor = load_peft_model(adapter)
    out = []
    for layers in choices:
        fz = GradientFeaturizer(model, layers=layers, out_dim=out_dim, seed=seed, tokenizer=tokenizer,
                                image_root=image_root, image_processor=processor, scores=())
        fs = fz.extract(records, batch_size=batch_size, progress=progress)
        kept = set(fs.ids)
        src = [s for r, s in zip(records, sources) if r["id"] in kept]
        row = k_rows(fs.features, [k], seed=seed, sources=src)[0]
        out.append({"layers": layers if isinstance(layers, str) else ",".join(map(str, layers)),
                    "parameters": int(sum(p.numel() for p in fz.params)), **row})
    return out


__all__ = ["AUTO_KS", "RULE", "choose_k", "compare_layers", "format_k_report", "k_rows", "pick"]
