"""One stage = one ordered list of steps on a pool (DESIGN §2): add → features → cluster → select →
train → evaluate → prune.

Each step is a plain function ``step(stage_dir, cfg, ctx) -> (record, manifest rows or None)``: it
reads what earlier steps left in its ``StageDir`` and writes its own artifacts there (atomically).
``run_steps`` runs them in order and commits each one the same way — its record into
``record.json``, then ``pool.json`` (the one commit point, ``pool.py``) — so a killed run resumes at
the first step not committed and ends with the same pool, selection, adapter and records. The pool
commands (``adaptinf-fast add|features|cluster|select|prune``) run the same steps without a model
(``POOL_STEPS``); ``LifelongRun`` adds ``train`` and ``evaluate`` through the context.

Under ``torch.distributed`` every rank calls ``run_steps``: the feature pass, k-means, training and
evaluation are split across the ranks (``COLLECTIVE``), the other steps run on rank 0; only rank 0
writes and commits, and the others re-read the pool after each step.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

from .._io import atomic_write, fault_point, iter_jsonl, write_json, write_jsonl
from ..features.featureset import FeatureSet
from ..featureview import FeatureView, Segment, open_array, to_storage
from ..ops.kmeans import KMeans
from ..selection.policy import prune_mask, release_subset, select_subset
from .choose_k import choose_k
from .composition import cluster_composition, source_shares
from .config import StageConfig
from .pool import PoolStore

log = logging.getLogger("adaptinf_fast")
STEPS = ("add", "features", "cluster", "select", "train", "evaluate", "prune")
POOL_STEPS = ("add", "features", "cluster", "select", "prune")
COLLECTIVE = ("features", "cluster", "train", "evaluate", "prune")


class StageDir:
    """Every artifact one stage writes and reads, under ``<pool>/stages/stage-NNN/``."""

    def __init__(self, pool: PoolStore, t: int):
        self.pool, self.t = pool, t
        self.path = pool.stage_dir(t)
        p = self.path
        self.features_json, self.features_npy, self.shards = p / "features.json", p / "features.npy", p / "feature-shards"
        self.labels_npy, self.centroids_npy, self.cluster_json = p / "labels.npy", p / "centroids.npy", p / "cluster.json"
        self.selection_json, self.prune_json = p / "selection.json", p / "prune.json"
        self.adapter, self.train_ckpt, self.eval_json = p / "adapter", p / "train-ckpt", p / "eval.json"
        # merges: the merged model after this stage; routed strategies: the router's task anchors
        # after it and HiDe's report (experts, specific layers, CKA)
        self.deployed, self.router_pt, self.hide_json = p / "deployed", p / "router.pt", p / "hide.json"
        self.record_json, self.timings_json = p / "record.json", p / "timings.json"

    def features(self) -> FeatureSet:
        """The stage's ids, scores and features as a ``FeatureView``: 16-bit rows memory-mapped from
        the files the features step left (its shards, an imported ``.npz``), never loaded whole."""
        doc = json.loads(self.features_json.read_text())
        if "view" in doc:
            view = FeatureView.load(doc["view"], self.path)
        else:  # stages written before views: one float16 file
            view = FeatureView([Segment(open_array(self.features_npy), "float16", None, self.features_npy)])
        if isinstance(doc["scores"], str):
            with np.load(self.path / doc["scores"]) as z:
                scores = {k: torch.from_numpy(z[k]) for k in z.files}
        else:
            scores = {k: torch.tensor(v) for k, v in doc["scores"].items()}
        return FeatureSet(doc["ids"], view, scores, [], {})

    def labels(self) -> torch.Tensor:
        return torch.from_numpy(np.load(self.labels_npy))

    def n_clusters(self) -> int:
        """K of the stage's clustering (the release's rules walk clusters 0..K-1, empty ones too)."""
        return int(np.load(self.centroids_npy, mmap_mode="r").shape[0])

    def selection(self) -> list:
        return json.loads(self.selection_json.read_text())["ids"]

    def record(self) -> dict:
        return json.loads(self.record_json.read_text()) if self.record_json.exists() else {"stage": self.t}

    def set_record(self, step: str, info: dict) -> None:
        rec = self.record()
        rec[step] = info
        write_json(self.record_json, rec)

    def timings(self) -> dict:
        return json.loads(self.timings_json.read_text()) if self.timings_json.exists() else {}

    def add_timing(self, step: str, seconds: float) -> None:
        write_json(self.timings_json, {**self.timings(), step: round(seconds, 4)})


@dataclass
class Context:
    """What the steps get besides their stage: the pool and, for a run with a model, callables.

    ``featurize(stage_dir, records) -> FeatureSet`` (default: from ``cfg.model`` or
    ``cfg.features_from``); ``train(stage_dir, cfg) -> record`` trains on ``stage_dir.selection()``
    and saves ``stage_dir.adapter``; ``evaluate(stage_dir, cfg) -> record`` writes ``stage_dir.eval_json``.
    """

    pool: PoolStore
    progress: bool = True
    featurize: Callable[[StageDir, list], FeatureSet] | None = None
    train: Callable[[StageDir, StageConfig], dict] | None = None
    evaluate: Callable[[StageDir, StageConfig], dict] | None = None

    @property
    def dist(self):
        import torch.distributed as dist

        return dist if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 else None

    @property
    def rank(self) -> int:
        return self.dist.get_rank() if self.dist else 0


Outcome = tuple[dict, "list[dict] | None"]


def read_records(path: str | Path) -> Iterable:
    """The records of a .jsonl file (streamed, one at a time) or of a JSON list."""
    p = Path(path)
    if p.suffix == ".jsonl":
        return iter_jsonl(p)
    doc = json.loads(p.read_text())
    if not isinstance(doc, list):
        raise ValueError(f"{p}: expected a JSON list of records or a .jsonl file")
    return doc


def _compute_device() -> torch.device:
    """Where k-means and pruning compute: this process's GPU when there is one (features are
    streamed to it from disk), else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def _skipped(cfg: StageConfig, step: str) -> Outcome:
    return {"skipped": f"method {cfg.method!r} without pruning needs no {step}"}, None


# -- the steps -----------------------------------------------------------------------------------------

def add(sd: StageDir, cfg: StageConfig, ctx: Context) -> Outcome:
    pool = ctx.pool
    rows = list(pool.rows)  # rows are never changed in place: the new manifest shares the unchanged ones
    info: dict[str, Any] = {"source": cfg.source, "added": 0, "skipped": []}
    if cfg.data is None:
        return info, rows
    added, seen, duplicates = [], {r["id"] for r in rows}, []

    def good_records():  # streamed from a .jsonl: only the ids are kept in memory
        for i, rec in enumerate(read_records(cfg.data)):
            if not isinstance(rec, dict) or "id" not in rec:
                info["skipped"].append([i, "record has no 'id'"])
            elif not ("conversations" in rec or "input_ids" in rec):
                info["skipped"].append([rec["id"], "record has neither 'conversations' nor 'input_ids'"])
            elif rec["id"] in seen:
                duplicates.append(rec["id"])
            else:
                seen.add(rec["id"])
                added.append(rec["id"])
                yield rec

    data_file = pool.root / "data" / f"{cfg.source}-{sd.t:03d}.jsonl"
    for stale in (pool.root / "data").glob(f"*-{sd.t:03d}.jsonl"):  # a killed, uncommitted add of this stage
        stale.unlink()
    write_jsonl(data_file, good_records())
    if duplicates:
        data_file.unlink()
        raise ValueError(f"{len(duplicates)} duplicate id(s) in {cfg.data} or already in the pool "
                         f"(first: {duplicates[:5]}); nothing was added")
    for item_id, why in info["skipped"]:
        log.warning("add: skipped %r: %s", item_id, why)
    rows += [{"id": i, "source": cfg.source, "stage_added": sd.t, "status": "pool", "status_stage": sd.t,
              "reason": None, "times_selected": 0} for i in added]
    info["added"] = len(added)
    return info, rows


def _from_npz(cfg: StageConfig, ids: list, sd: StageDir, ctx: Context) -> FeatureSet:
    """The pool's rows of a precomputed ``.npz`` (ids, features (N, k), score_<name>) as a view:
    an uncompressed member is memory-mapped where it lies, a compressed one is first copied out
    (streamed) to ``features-from.npy`` in the stage folder; nothing is converted to float32."""
    path = Path(cfg.features_from)
    with np.load(path, allow_pickle=False) as z:
        if "features" not in z.files or "ids" not in z.files:
            raise ValueError(f"{path} needs arrays 'ids' and 'features'; it has {z.files}")
        file_ids = z["ids"].tolist()
        scores = {n: torch.from_numpy(z[f"score_{n}"].astype(np.float32)) for n in cfg.scores if f"score_{n}" in z.files}
    try:
        arr, member = open_array(path, "features"), "features"
    except ValueError as exc:
        if "compressed" not in str(exc):
            raise
        import shutil
        import zipfile

        out = sd.path / "features-from.npy"
        if ctx.rank == 0:  # one copy, by one process
            with zipfile.ZipFile(path) as zf, zf.open("features.npy") as src:
                atomic_write(out, lambda f: shutil.copyfileobj(src, f, 1 << 24))
        if ctx.dist:
            ctx.dist.barrier()
        path, member, arr = out, None, open_array(out)
    kind = {np.dtype(np.float16): "float16", np.dtype(np.float32): "float32"}.get(arr.dtype)
    if kind is None:
        raise ValueError(f"{cfg.features_from}: features of dtype {arr.dtype}; expected float16 or float32")
    index = {i: k for k, i in enumerate(file_ids)}
    missing = [i for i in ids if i not in index]
    if missing or len(file_ids) != len(index) or arr.shape[0] != len(file_ids):
        if member is None and path.parent == sd.path and ctx.rank == 0:
            path.unlink(missing_ok=True)  # the copy of a file that does not fit the pool
        raise ValueError(f"features in {cfg.features_from} do not match the pool: {len(missing)} pool id(s) "
                         f"have no feature row (first: {missing[:3]}), {arr.shape[0]} rows for {len(file_ids)} ids "
                         f"and {len(ids)} samples")
    take = np.fromiter((index[i] for i in ids), dtype=np.int64, count=len(ids))
    view = FeatureView([Segment(arr, kind, take, path, member)])
    return FeatureSet(ids, view, {n: v[torch.from_numpy(take)] for n, v in scores.items()}, [], {})


def model_featurizer(cfg: StageConfig, progress: bool = True) -> Callable[[StageDir, list], FeatureSet]:
    """Features from the saved PEFT adapter ``cfg.model`` (resumable shards in the stage folder)."""
    if cfg.model is None:
        raise ValueError("the features step needs features_from (a .npz), model (a PEFT adapter folder) or a featurizer")
    from ..features import GradientFeaturizer
    from .models import load_peft_model

    model, tokenizer, processor = load_peft_model(cfg.model)
    fz = GradientFeaturizer(model, layers=cfg.layers, out_dim=cfg.out_dim, seed=cfg.seed, scores=cfg.scores,
                            tokenizer=tokenizer, image_root=cfg.image_root, max_length=cfg.max_length, rules=cfg.rules,
                            image_processor=processor)
    return lambda sd, records: fz.extract(records, batch_size=cfg.batch_size, out_dir=sd.shards, progress=progress,
                                          disk_dtype=cfg.dtype, lazy=True)


def features(sd: StageDir, cfg: StageConfig, ctx: Context) -> Outcome:
    if not cfg.needs_features:
        return _skipped(cfg, "features")
    ids = ctx.pool.ids()
    if cfg.features_from is not None:
        fs = _from_npz(cfg, ids, sd, ctx)
    else:
        fs = (ctx.featurize or model_featurizer(cfg, ctx.progress))(sd, ctx.pool.records(ids))
    if len(fs) == 0:
        raise ValueError("no sample in the pool has features")
    if ctx.rank == 0:
        view = fs.features
        if not isinstance(view, FeatureView):  # a featurizer that returned a tensor: stored once, 16-bit
            arr = to_storage(view, cfg.dtype)
            atomic_write(sd.features_npy, lambda f: np.save(f, arr))
            view = FeatureView([Segment(open_array(sd.features_npy), cfg.dtype, None, sd.features_npy)])
        scores_file = sd.path / "scores.npz"
        atomic_write(scores_file, lambda f: np.savez(f, **{k: v.numpy().astype(np.float32) for k, v in fs.scores.items()}))
        write_json(sd.features_json, {"ids": fs.ids, "scores": scores_file.name, "view": view.describe(sd.path),
                                      "skipped": [list(s) for s in fs.skipped]})
    return {"samples": len(fs), "dim": int(fs.features.shape[1]), "skipped": len(fs.skipped),
            "dtype": str(fs.features.dtype).replace("torch.", "")}, None


def cluster(sd: StageDir, cfg: StageConfig, ctx: Context) -> Outcome:
    if not cfg.needs_features:
        return _skipped(cfg, "cluster")
    fs = sd.features()
    k, report = cfg.k, None
    if not isinstance(k, int):  # "auto" or candidates: chosen on a sample (every rank, same sample and seed)
        report = choose_k(fs.features, None if k == "auto" else list(k), seed=cfg.seed,
                          sources=_sources(ctx.pool, fs.ids), device=_compute_device())
        k = report["chosen"]
    if k > len(fs):
        raise ValueError(f"k={k} is larger than the pool ({len(fs)} samples with features)")
    x, dist = fs.features, ctx.dist
    if dist:  # each process clusters a contiguous shard; the centres are those of the whole pool
        world, rank = dist.get_world_size(), dist.get_rank()
        bounds = [len(fs) * r // world for r in range(world + 1)]
        x = x.sub(bounds[rank], bounds[rank + 1])
    km = KMeans(k, metric="cosine", n_init=3, seed=cfg.seed, progress=ctx.progress,
                chunk_rows=cfg.rows_in_memory, device=_compute_device()).fit(x)
    labels = km.labels_.cpu()
    if dist:
        parts: list = [None] * world
        dist.all_gather_object(parts, labels)
        labels = torch.cat(parts)
    sizes = torch.bincount(labels, minlength=k).tolist()
    info = {"k": k, "sizes": sizes, "inertia": round(km.inertia_, 4), "n_iter": km.n_iter_,
            **({"rows_in_memory": cfg.rows_in_memory} if cfg.rows_in_memory else {}),
            **({"k_report": report} if report else {})}
    if ctx.rank == 0:
        atomic_write(sd.labels_npy, lambda f: np.save(f, labels.numpy()))
        atomic_write(sd.centroids_npy, lambda f: np.save(f, km.cluster_centers_.cpu().numpy()))
        comp = cluster_composition(labels.numpy(), _sources(ctx.pool, fs.ids), k)
        write_json(sd.cluster_json, comp)
        info["agreement_with_sources"] = comp["overall"]
    return info, None


def _sources(pool: PoolStore, ids: list) -> list[str]:
    """The data source of each id (as added)."""
    of = {r["id"]: r["source"] for r in pool.rows}
    return [of[i] for i in ids]


def select(sd: StageDir, cfg: StageConfig, ctx: Context) -> Outcome:
    if cfg.needs_features:
        fs, labels = sd.features(), sd.labels()
    else:  # random / full: only the pool's ids matter
        ids = ctx.pool.ids()
        fs, labels = FeatureSet(ids, torch.zeros(len(ids), 0), {}, [], {}), torch.zeros(len(ids), dtype=torch.long)
    n, budget = len(fs), cfg.budget
    info: dict[str, Any] = {"method": cfg.method, "budget": budget}
    if budget > n:
        log.warning("select: budget %d is larger than the pool (%d); selecting all", budget, n)
        info["note"] = f"budget capped at the pool size {n}"
        budget = n
    if cfg.rules == "release" and cfg.method not in ("random", "full", "semdedup"):
        chosen, extra = release_subset(fs.features, labels, fs.scores, method=cfg.method, budget=budget,
                                       k=sd.n_clusters(), seed=cfg.seed, progress=ctx.progress,
                                       pool_budget=cfg.pool_budget if cfg.prune_mode == "budget" else None,
                                       device=_compute_device(), max_rows=cfg.rows_in_memory)
    else:
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + sd.t)
        chosen, extra = select_subset(fs.features, labels, fs.scores, method=cfg.method, budget=budget,
                                      generator=gen, score_order=cfg.scores, eps=cfg.eps, device=_compute_device(),
                                      max_rows=cfg.rows_in_memory)
    info.update(extra)
    chosen_ids = [fs.ids[i] for i in sorted(chosen.tolist())]
    info["selected"] = len(chosen_ids)
    info["by_source"] = source_shares(_sources(ctx.pool, fs.ids), _sources(ctx.pool, chosen_ids))
    write_json(sd.selection_json, {"ids": chosen_ids})
    picked, rows = set(chosen_ids), []
    for r in ctx.pool.rows:  # changed rows are new dicts; unchanged ones are shared with the old manifest
        if r["status"] != "pruned":
            if r["id"] in picked:
                r = {**r, "status": "selected", "status_stage": sd.t, "times_selected": r["times_selected"] + 1}
            elif r["status"] == "selected":
                r = {**r, "status": "pool", "status_stage": sd.t}
        rows.append(r)
    return info, rows


def train(sd: StageDir, cfg: StageConfig, ctx: Context) -> Outcome:
    if ctx.train is None:
        raise RuntimeError("the train step needs a model: run it through LifelongRun (adaptinf-fast run)")
    return ctx.train(sd, cfg), None


def evaluate(sd: StageDir, cfg: StageConfig, ctx: Context) -> Outcome:
    if ctx.evaluate is None:
        raise RuntimeError("the evaluate step needs a model: run it through LifelongRun (adaptinf-fast run)")
    return ctx.evaluate(sd, cfg), None


def prune(sd: StageDir, cfg: StageConfig, ctx: Context) -> Outcome:
    mode = cfg.prune_mode
    info: dict[str, Any] = {"mode": mode}
    if mode == "none":
        if ctx.rank == 0:
            write_json(sd.prune_json, {"ids": [], "reason": None})
        return {**info, "pruned": 0, "pool_after": len(ctx.pool.ids())}, None
    fs, labels = sd.features(), sd.labels()
    drop = prune_mask(fs.features, labels, mode=mode, pool_budget=cfg.pool_budget, eps=cfg.eps,
                      progress=ctx.progress, rules=cfg.rules, k=sd.n_clusters() if cfg.rules == "release" else None,
                      max_rows=cfg.rows_in_memory, distributed=ctx.dist is not None, device=_compute_device())
    if mode == "budget":
        info["pool_budget"], reason = cfg.pool_budget, f"redundant: pool budget {cfg.pool_budget}"
    else:
        info["eps"], reason = cfg.eps, f"semdedup eps={cfg.eps}"
    pruned = {fs.ids[i] for i in drop.nonzero().flatten().tolist()}
    info["pruned"] = len(pruned)
    info["by_source"] = source_shares(_sources(ctx.pool, fs.ids), _sources(ctx.pool, [i for i in fs.ids if i in pruned]))
    if ctx.rank != 0:  # every rank computed its clusters; rank 0 writes and commits
        return info, None
    write_json(sd.prune_json, {"ids": [i for i in fs.ids if i in pruned], "reason": reason})
    rows = [{**r, "status": "pruned", "status_stage": sd.t, "reason": reason} if r["id"] in pruned else r
            for r in ctx.pool.rows]
    info["pool_after"] = sum(r["status"] != "pruned" for r in rows)
    return info, rows


STEP_FUNCTIONS: dict[str, Callable[[StageDir, StageConfig, Context], Outcome]] = {
    "add": add, "features": features, "cluster": cluster, "select": select, "train": train,
    "evaluate": evaluate, "prune": prune}


# -- the runner ----------------------------------------------------------------------------------------

def check_order(pool: PoolStore, t: int, step: str, plan: tuple = STEPS) -> None:
    """Refuse a step whose earlier steps (in ``plan``) or whose previous stage are not finished."""
    earlier = plan[: plan.index(step)] if step in plan else ()
    missing = [s for s in earlier if not pool.state.finished(t, s) and s != "add"]
    if missing:
        raise RuntimeError(f"stage {t}: run {missing[0]!r} before {step!r}")
    if t < pool.state.stage:
        raise RuntimeError(f"stage {t} is over (the pool is at stage {pool.state.stage})")
    if t > pool.state.stage + 1 or (t == pool.state.stage + 1 and pool.state.stage > 0
                                    and not pool.state.finished(pool.state.stage, "prune")):
        raise RuntimeError(f"stage {pool.state.stage} is not finished; finish it before stage {t}")


def run_steps(cfg: StageConfig, ctx: Context, steps: tuple = STEPS, plan: tuple = STEPS) -> dict:
    """Run (or resume) ``steps`` of stage ``cfg.stage``, in order; returns the stage's record."""
    pool = ctx.pool
    sd = StageDir(pool, cfg.stage)
    dist = ctx.dist
    for step in steps:
        if pool.state.finished(cfg.stage, step):
            log.info("stage %d: %s already done", cfg.stage, step)
            continue
        check_order(pool, cfg.stage, step, plan)
        t0 = time.perf_counter()
        fault_point(f"{step}:start")
        if ctx.rank == 0 or step in COLLECTIVE:
            info, rows = STEP_FUNCTIONS[step](sd, cfg, ctx)
        if ctx.rank == 0:
            sd.set_record(step, info)
            fault_point(f"{step}:artifacts")
            pool.commit(cfg.stage, step, rows)
            sd.add_timing(step, time.perf_counter() - t0)
        if dist:
            dist.barrier()
            if ctx.rank != 0:
                pool.reload()
    return sd.record()


def run_stage(pool_dir: str | Path, cfg: StageConfig, featurize=None, progress: bool = True) -> dict:
    """Run (or resume) a whole pool-only stage (``POOL_STEPS``) on ``pool_dir``."""
    from .._io import FolderLock

    with FolderLock(pool_dir, "pool"):
        ctx = Context(PoolStore(pool_dir, create=True), progress=progress, featurize=featurize)
        return run_steps(cfg, ctx, POOL_STEPS, POOL_STEPS)


__all__ = ["COLLECTIVE", "Context", "POOL_STEPS", "STEPS", "StageDir", "check_order", "run_stage", "run_steps"]
