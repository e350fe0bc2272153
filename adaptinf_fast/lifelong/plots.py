"""PNG plots of a pool: what each stage's clusters hold by source (or their sizes), the pool, selection
and pruned shares per source, selector per cluster, score distributions with CCS bins, pool size
across stages."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from ..selection import ccs_bins  # noqa: E402
from .pool import PoolStore  # noqa: E402
from .steps import StageDir  # noqa: E402


def write_plots(pool_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    pool = PoolStore(pool_dir)
    out = Path(out_dir) if out_dir else pool.root / "plots"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    stages = sorted(int(k) for k in pool.state.done)
    sizes_by_stage = []
    for t in stages:
        d = pool.stage_dir(t)
        rec = json.loads((d / "record.json").read_text()) if (d / "record.json").exists() else {}
        if "prune" in rec:
            sizes_by_stage.append((t, rec["prune"]["pool_after"]))
        if (d / "cluster.json").exists():  # a stacked bar per cluster: what it holds, by source
            comp = json.loads((d / "cluster.json").read_text())
            fig, ax = plt.subplots(figsize=(6, 3))
            bottom = [0] * len(comp["sizes"])
            for j, source in enumerate(comp["sources"]):
                counts = [row[j] for row in comp["counts"]]
                ax.bar(range(len(counts)), counts, bottom=bottom, label=source)
                bottom = [b + c for b, c in zip(bottom, counts)]
            o = comp["overall"]
            ax.set(xlabel="cluster", ylabel="samples",
                   title=f"stage {t}: clusters by source (purity {o['purity']}, NMI {o['nmi']})")
            ax.legend(fontsize=7)
            written.append(_save(fig, out / f"stage-{t:03d}-cluster-sources.png"))
        elif "sizes" in rec.get("cluster", {}):
            fig, ax = plt.subplots(figsize=(6, 3))
            ax.bar(range(len(rec["cluster"]["sizes"])), rec["cluster"]["sizes"])
            ax.set(xlabel="cluster", ylabel="samples", title=f"stage {t}: cluster sizes")
            written.append(_save(fig, out / f"stage-{t:03d}-cluster-sizes.png"))
        shares = {what: rec.get(step, {}).get("by_source") for what, step in (("selected", "select"), ("pruned", "prune"))}
        if shares["selected"]:  # per source: its share of the pool, of the selection, of what was pruned
            names = list(shares["selected"])
            fig, ax = plt.subplots(figsize=(6, 3))
            width = 0.27
            series = [("pool", [shares["selected"][n]["pool_share"] for n in names])]
            series += [(what, [v[n]["picked_share"] if n in v else 0.0 for n in names]) for what, v in shares.items() if v]
            for i, (label, values) in enumerate(series):
                ax.bar([x + (i - 1) * width for x in range(len(names))], values, width, label=label)
            ax.set_xticks(range(len(names)), names)
            ax.set(ylabel="share", title=f"stage {t}: the pool, the selection and the pruned, by source")
            ax.legend(fontsize=7)
            written.append(_save(fig, out / f"stage-{t:03d}-source-shares.png"))
        selectors = rec.get("select", {}).get("selectors")
        if selectors:
            names = sorted(set(selectors.values()))
            fig, ax = plt.subplots(figsize=(6, 3))
            ax.bar(list(selectors), [names.index(s) for s in selectors.values()], color="tab:orange")
            ax.set_yticks(range(len(names)), names)
            ax.set(xlabel="cluster", title=f"stage {t}: chosen selector per cluster")
            written.append(_save(fig, out / f"stage-{t:03d}-selectors.png"))
            sd = StageDir(pool, t)
            fs, labels = sd.features(), sd.labels()
            clusters = list(selectors)
            fig, axes = plt.subplots(len(clusters), 1, figsize=(6, 1.6 * len(clusters)), squeeze=False)
            for ax, c in zip(axes[:, 0], clusters):
                v = fs.scores[selectors[c]][labels == int(c)].double()
                v = v.clamp_min(1e-12).log() if selectors[c] == "ppl" else v
                _, _, edges = ccs_bins(v)
                ax.hist(v.numpy(), bins=60, color="tab:blue", alpha=0.7)
                for e in edges[:: 10].tolist() + [edges[-1].item()]:
                    ax.axvline(e, color="k", lw=0.5)
                ax.set_ylabel(f"c{c}: {selectors[c]}", fontsize=7)
            axes[0, 0].set_title(f"stage {t}: score per cluster with the CCS range (every 10th bin edge)")
            written.append(_save(fig, out / f"stage-{t:03d}-score-distributions.png"))
    if sizes_by_stage:
        fig, ax = plt.subplots(figsize=(5, 3))
        ax.plot([s for s, _ in sizes_by_stage], [n for _, n in sizes_by_stage], marker="o")
        ax.set(xlabel="stage", ylabel="pool size after pruning", title="pool size across stages")
        written.append(_save(fig, out / "pool-size.png"))
    return written


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


__all__ = ["write_plots"]
