"""Pool subcommands of ``adaptinf-fast``: add, features, cluster, select, prune, status, stage, plots."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .pool import PoolStore

# The steps and the config schema (pydantic) are imported by the commands, not here: building the
# parser (every `adaptinf-fast` call, `info` included) needs neither.


def add_parsers(sub) -> None:
    def pool_cmd(name: str, help_: str):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--pool", required=True, type=Path, help="pool directory")
        p.add_argument("--stage", type=int, default=None, help="stage number (default: the current one)")
        p.add_argument("--resume", action="store_true", help="skip (instead of refusing) a step that is already done")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--rules", choices=("adaptinf", "release"), default="adaptinf",
                       help="our selection rules (default) or the Adapt-∞ release's, id for id (README: where we differ)")
        return p

    p = pool_cmd("add", "add a dataset (JSON list or JSONL of records with 'id') to the pool as a new stage")
    p.add_argument("--data", required=True)
    p.add_argument("--source", required=True, help="dataset name recorded for each sample")
    p = pool_cmd("features", "compute or import per-sample features and scores for the pool")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--from", dest="features_from", help=".npz with ids, features, score_<name>")
    g.add_argument("--model", help="saved PEFT adapter folder (base model and tokenizer found locally)")
    p.add_argument("--layers", default="last", help="'last', 'all' or comma-separated decoder-layer indices")
    p.add_argument("--out-dim", type=int, default=8192)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--dtype", choices=("float16", "bfloat16"), default="float16",
                   help="how a model's features are stored (read through a memory map, never loaded whole)")
    p.add_argument("--compare-layers", default=None,
                   help="instead of the features step: compare layer choices (e.g. 'last;all;0,1') on a sample of the "
                        "pool with --model: silhouette and agreement with the sources at --k, written to layers.json")
    p.add_argument("--sample", type=int, default=2000, help="records of the pool --compare-layers uses")
    p.add_argument("--k", type=_k_arg, default=10, help="K for --compare-layers")
    p = pool_cmd("cluster", "spherical k-means pseudo-skills on the features")
    p.add_argument("--k", type=_k_arg, default=10,
                   help="K, 'auto' (chosen on a sample: inertia, silhouette, agreement with the sources per K, "
                        "largest silhouette wins, ties to the smaller K) or a comma-separated list of candidates")
    p.add_argument("--rows-in-memory", type=int, default=None,
                   help="feature rows per streamed k-means chunk (default: 256 MiB of float32 rows)")
    p.add_argument("--elbow", default=None, help="comma-separated K values: print inertia per K and write "
                   "elbow.png in the stage folder, without clustering")
    p = pool_cmd("select", "choose the training subset")
    p.add_argument("--budget", type=int, required=True)
    p.add_argument("--method", default="adaptinf", help="adaptinf | random | full | semdedup | score:<name>")
    p.add_argument("--eps", type=float, default=0.05, help="SemDeDup eps for --method semdedup")
    p.add_argument("--pool-budget", type=int, default=None,
                   help="with --rules release: select from the pool pruned to this size first, as the release's --semdedup")
    p = pool_cmd("prune", "permanently prune redundant samples")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--pool-budget", type=int, help="Adapt-∞ budget mode: pool size to keep")
    g.add_argument("--eps", type=float, help="SemDeDup threshold mode")
    p.add_argument("--rows-in-memory", type=int, default=None,
                   help="feature rows of one pruning group (default: 512 MiB of float32 rows); a larger cluster is tiled out of core")
    p = sub.add_parser("status", help="counts by status and stage, cluster sizes, selector per cluster")
    p.add_argument("--pool", required=True, type=Path)
    p = sub.add_parser("stage", help="run (or resume) whole stages from a YAML/TOML config")
    p.add_argument("--config", required=True, type=Path)
    p.add_argument("--pool", type=Path, default=None, help="pool directory (default: the config's 'pool')")
    p = sub.add_parser("plots", help="write PNG plots of the pool")
    p.add_argument("--pool", required=True, type=Path)
    p.add_argument("--out", type=Path, default=None)


def _k_arg(text: str):
    """--k: an int, 'auto' or a comma-separated list of candidate Ks."""
    text = str(text)
    if text == "auto":
        return "auto"
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--k is {text!r}; expected an int, 'auto' or a list like 4,8,16") from None
    return values[0] if len(values) == 1 else values


def _current_stage(pool: PoolStore, step: str) -> int:
    t = pool.state.stage
    if step == "add" and (t == 0 or pool.state.finished(t, "prune")):
        return t + 1
    return max(t, 1)


def run(args) -> int:
    from .._io import FolderLock
    from .config import load_stage_config
    from .pool import PoolStore
    from .steps import run_stage

    cmd = args.command
    if cmd == "status":
        return status(PoolStore(args.pool))
    if cmd == "plots":
        from .plots import write_plots

        for path in write_plots(args.pool, args.out):
            print(path)
        return 0
    if cmd == "stage":
        pool_dir, cfgs = load_stage_config(args.config)  # every stage validated before any work
        pool_dir = args.pool or pool_dir
        if pool_dir is None:
            raise ValueError("no pool directory: pass --pool or set 'pool' in the config")
        for cfg in cfgs:
            rec = run_stage(pool_dir, cfg, progress=not getattr(args, "no_progress", False))
            print(json.dumps({"stage": cfg.stage, **{k: v for k, v in rec.items() if k != "stage"}}))
        return 0
    if cmd != "add":
        PoolStore(args.pool)  # a clear error for a folder that is not a pool, before locking it
    with FolderLock(args.pool, "pool"):  # a second process on the pool stops here
        return _pool_step(PoolStore(args.pool, create=(cmd == "add")), cmd, args)


def _pool_step(pool: PoolStore, cmd: str, args) -> int:
    from .config import StageConfig
    from .steps import POOL_STEPS, Context, StageDir, run_steps

    t = args.stage if args.stage is not None else _current_stage(pool, cmd)
    if cmd == "cluster" and args.elbow:
        from ..ops.kmeans import elbow, format_elbow, plot_elbow

        if not pool.state.finished(t, "features"):
            raise RuntimeError(f"stage {t}: run 'features' before the elbow")
        rows = elbow(StageDir(pool, t).features().features, [int(k) for k in args.elbow.split(",")], seed=args.seed)
        print(format_elbow(rows))
        print(plot_elbow(rows, pool.stage_dir(t) / "elbow.png"))
        return 0
    if cmd == "features" and args.compare_layers:
        return _compare_layers(pool, t, args)
    fields = {k: getattr(args, k) for k in ("data", "source", "features_from", "model", "out_dim", "batch_size",
                                            "k", "budget", "method", "seed", "rules", "dtype", "rows_in_memory")
              if getattr(args, k, None) is not None}
    if hasattr(args, "layers"):
        fields["layers"] = args.layers if args.layers in ("last", "all") else [int(i) for i in args.layers.split(",")]
    if cmd == "prune":
        fields.update(prune="budget" if args.pool_budget is not None else "threshold",
                      pool_budget=args.pool_budget, eps=args.eps if args.eps is not None else 0.05)
    elif cmd == "select" and args.rules == "release" and args.pool_budget is not None:
        fields.update(prune="budget", pool_budget=args.pool_budget, eps=args.eps)
    else:
        fields.update(prune="none")
        if getattr(args, "eps", None) is not None:
            fields["eps"] = args.eps
    cfg = StageConfig(stage=t, **fields)
    if pool.state.finished(t, cmd):
        if not args.resume:
            raise RuntimeError(f"stage {t}: {cmd} is already done (pass --resume to skip it)")
        print(f"stage {t}: {cmd} already done")
        return 0
    run_steps(cfg, Context(pool), steps=(cmd,), plan=POOL_STEPS)
    rec = StageDir(pool, t).record().get(cmd) or {}
    if cmd == "cluster":
        _print_cluster(StageDir(pool, t), rec)
    print(json.dumps({"stage": t, cmd: rec}))  # last: one JSON line for scripts
    return 0


def _print_cluster(sd, rec: dict) -> None:
    from .choose_k import format_k_report
    from .composition import format_composition

    if "k_report" in rec:
        print(f"stage {sd.t}: K chosen {rec['k']}")
        print("\n".join(format_k_report(rec["k_report"])))
    if sd.cluster_json.exists():
        print(f"stage {sd.t}: what the clusters hold, by source")
        print("\n".join(format_composition(json.loads(sd.cluster_json.read_text()))))


def _compare_layers(pool: PoolStore, t: int, args) -> int:
    """``features --compare-layers``: the layer choices side by side on a sample of the pool."""
    import random

    from .._io import write_json
    from .choose_k import compare_layers

    if not args.model:
        raise ValueError("--compare-layers needs --model (a saved PEFT adapter folder)")
    if not isinstance(args.k, int):
        raise ValueError("--compare-layers clusters at one K: pass --k N")
    choices = [c if c in ("last", "all") else [int(i) for i in c.split(",")] for c in args.compare_layers.split(";")]
    rows = [r for r in pool.rows if r["status"] != "pruned"]
    rows = sorted(random.Random(args.seed).sample(rows, min(args.sample, len(rows))), key=lambda r: r["id"])
    by_id = {r["id"]: r["source"] for r in rows}
    records = pool.records(list(by_id))
    report = compare_layers(args.model, records, [by_id[r["id"]] for r in records], choices, k=args.k,
                            out_dim=args.out_dim, seed=args.seed, batch_size=args.batch_size)
    print(f"layers compared on {len(records)} pool records at K={args.k} (out_dim {args.out_dim}):")
    print(f"  {'layers':>10} {'parameters':>12} {'silhouette':>11} {'purity':>7} {'NMI':>6} {'ARI':>6}")
    for r in report:
        print(f"  {r['layers']:>10} {r['parameters']:>12,} {r['silhouette']:>11.3f} {r['purity']:>7.3f} "
              f"{r['nmi']:>6.3f} {r['ari']:>6.3f}")
    pool.stage_dir(t).mkdir(parents=True, exist_ok=True)
    write_json(pool.stage_dir(t) / "layers.json", {"k": args.k, "sample": len(records), "rows": report})
    print(f"wrote {pool.stage_dir(t) / 'layers.json'}")
    return 0


def status(pool: PoolStore) -> int:
    from .composition import format_composition, format_shares
    from .pool import STATUSES
    from .steps import POOL_STEPS, STEPS

    counts = pool.counts()
    print(f"pool {pool.root}: stage {pool.state.stage}, " + ", ".join(f"{s} {counts[s]}" for s in STATUSES))
    by_stage: dict[int, dict[str, int]] = {}
    for r in pool.rows:
        by_stage.setdefault(r["stage_added"], {s: 0 for s in STATUSES})[r["status"]] += 1
    for t, c in sorted(by_stage.items()):
        print(f"  added at stage {t}: " + ", ".join(f"{s} {c[s]}" for s in STATUSES))
    for t in sorted(int(k) for k in pool.state.done):
        done = pool.state.done[str(t)]
        if t == 0:
            print(f"stage 0 (before any stage): done {', '.join(done)}")
            continue
        plan = STEPS if "train" in done or "evaluate" in done else POOL_STEPS
        left = [s for s in plan if s not in done]
        print(f"stage {t}: done {', '.join(done)}" + (f"; next {left[0]}" if left else ""))
        path = pool.stage_dir(t) / "record.json"
        rec = json.loads(path.read_text()) if path.exists() else {}
        if "sizes" in rec.get("cluster", {}):
            print(f"  cluster sizes: {rec['cluster']['sizes']}")
            comp_file = pool.stage_dir(t) / "cluster.json"
            if comp_file.exists():
                print("\n".join(format_composition(json.loads(comp_file.read_text()))))
        if "selectors" in rec.get("select", {}):
            print(f"  selector per cluster: {rec['select']['selectors']}")
        if "select" in rec:
            print(f"  selected {rec['select']['selected']} ({rec['select']['method']})")
            if "by_source" in rec["select"]:
                print(format_shares(rec["select"]["by_source"], "selected"))
        if "prune" in rec:
            print(f"  pruned {rec['prune']['pruned']}; pool after {rec['prune']['pool_after']}")
            if rec["prune"].get("by_source") and rec["prune"]["pruned"]:
                print(format_shares(rec["prune"]["by_source"], "pruned"))
    memory_outlook(pool)
    return 0


def memory_outlook(pool: PoolStore) -> None:
    """The memory estimate of the next stage's steps (``memory.estimate``) from the pool's size and
    the last stage's feature width, K and largest cluster (scaled to the pool's size now)."""
    from .memory import estimate, format_bytes

    last = None
    for t in sorted((int(k) for k in pool.state.done), reverse=True):
        path = pool.stage_dir(t) / "record.json"
        rec = json.loads(path.read_text()) if path.exists() else {}
        if "dim" in rec.get("features", {}):
            last = rec
            break
    if last is None:
        print("memory estimate: after the first features step (it needs the feature width)")
        return
    n = len(pool.ids())
    d = last["features"]["dim"]
    storage = 4 if last["features"].get("dtype") == "float32" else 2
    sizes = last.get("cluster", {}).get("sizes") or [n]
    k = len(sizes)
    largest = math.ceil(max(sizes) * n / max(sum(sizes), 1))
    rows = last.get("cluster", {}).get("rows_in_memory")
    sel = last.get("select", {})  # a selection that prunes first needs the prune step's working set too
    select_prunes = sel.get("method") == "semdedup" or "selected_from" in sel
    est = estimate(n, d, k, largest_cluster=largest, storage_bytes=storage, chunk_rows=rows, max_rows=rows,
                   select_prunes=select_prunes)
    print(f"memory estimate for the next stage at N {n:,} (before its new data), D {d}, K {k}, largest cluster "
          f"~{largest:,}; features on disk {format_bytes(n * d * storage)}, never loaded whole:")
    print("  " + ", ".join(f"{step} {format_bytes(b)}" for step, b in est.items())
          + " (peak allocations per step; formula in lifelong/memory.py)")
