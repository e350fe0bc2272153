"""One Adapt-∞ stage on a pool directory: add → features → cluster → select → prune (DESIGN §2).

Each step reads the committed state, writes its artifacts, and commits (see ``pool.py``). A killed
run resumes at the first unfinished step and ends with the same pool, selection and records as
an uninterrupted run. Per-step wall times go to ``timings.json``, apart from the records.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..features.featureset import FeatureSet, atomic_write
from ..ops.kmeans import KMeans
from ..selection.policy import RULES, prune_mask, release_subset, select_subset
from .pool import PoolStore, read_jsonl, write_json, write_jsonl

log = logging.getLogger("adaptinf_fast")
STEPS = ("add", "features", "cluster", "select", "prune")
METHODS = ("adaptinf", "random", "full", "semdedup")  # and "score:<name>"
SCORE_NAMES = ("ppl", "el2n", "entropy", "grand", "ig")


@dataclass
class StageConfig:
    """What one stage does. ``budget``: training samples to select; ``pool_budget``: pool size
    after pruning (budget mode) — or ``prune="threshold"`` with ``eps`` (SemDeDup), or ``"none"``.
    ``rules``: ``"adaptinf"`` (ours, DESIGN §4) or ``"release"`` (the Adapt-∞ release's scores,
    selection and pruning, id for id; see ``selection/release.py`` and the README's table)."""

    stage: int
    data: str | None = None
    source: str | None = None
    features_from: str | None = None  # .npz with ids, features (N, k), score_<name>
    model: str | None = None  # or a saved PEFT adapter folder: features computed by GradientFeaturizer
    layers: Any = "last"
    out_dim: int = 8192
    feature_batch_size: int = 8
    max_length: int | None = None
    image_root: str | None = None
    k: int = 10
    method: str = "adaptinf"
    budget: int = 1000
    scores: list[str] = field(default_factory=lambda: list(SCORE_NAMES))
    prune: str = "budget"
    pool_budget: int | None = None
    eps: float = 0.05
    seed: int = 0
    rules: str = "adaptinf"

    @property
    def needs_features(self) -> bool:
        """False for the baselines that look at no feature: random or full selection without pruning."""
        return self.method not in ("random", "full") or self.prune != "none"

    def validate(self) -> None:
        """Every configuration error, reported before any work starts."""
        errors = []
        if not isinstance(self.stage, int) or self.stage < 1:
            errors.append(f"stage is {self.stage!r}; expected an int >= 1")
        if self.method not in METHODS and not (self.method.startswith("score:") and self.method[6:] in SCORE_NAMES):
            errors.append(f"method is {self.method!r}; expected one of {METHODS} or score:<{'|'.join(SCORE_NAMES)}>")
        if not isinstance(self.k, int) or self.k < 1:
            errors.append(f"k is {self.k!r}; expected an int >= 1")
        if not isinstance(self.budget, int) or self.budget < 0:
            errors.append(f"budget is {self.budget!r}; expected an int >= 0")
        if self.prune not in ("budget", "threshold", "none"):
            errors.append(f"prune is {self.prune!r}; expected 'budget', 'threshold' or 'none'")
        if self.prune == "budget" and (not isinstance(self.pool_budget, int) or self.pool_budget < 0):
            errors.append("prune='budget' needs pool_budget, an int >= 0")
        if self.prune == "threshold" and not (isinstance(self.eps, (int, float)) and 0 < self.eps < 2):
            errors.append(f"eps is {self.eps!r}; expected a number in (0, 2)")
        if self.rules not in RULES:
            errors.append(f"rules is {self.rules!r}; expected one of {RULES}")
        elif self.rules == "release" and self.prune == "threshold":
            errors.append("rules='release' prunes only to a pool budget (prune='budget' or 'none'): the release has no threshold mode")
        unknown = set(self.scores) - set(SCORE_NAMES)
        if unknown or not self.scores:
            errors.append(f"scores must be a non-empty subset of {SCORE_NAMES}; got {self.scores}")
        if self.data is not None and not Path(self.data).exists():
            errors.append(f"data file {self.data} does not exist")
        if self.data is not None and not self.source:
            errors.append("data needs a source name")
        if self.features_from is not None and not Path(self.features_from).exists():
            errors.append(f"features file {self.features_from} does not exist")
        if self.model is not None and not (Path(self.model) / "adapter_config.json").exists():
            errors.append(f"model {self.model} is not a saved PEFT adapter folder (no adapter_config.json)")
        if self.model is not None and self.features_from is not None:
            errors.append("give either features_from or model, not both")
        if errors:
            raise ValueError("invalid stage config:\n  - " + "\n  - ".join(errors))


def _fault(point: str) -> None:
    """Fault injection for tests: ADAPTINF_FAULT=<step>:<point> kills this process there."""
    if os.environ.get("ADAPTINF_FAULT") == point:
        os.kill(os.getpid(), signal.SIGKILL)


def read_records(path: str | Path) -> list:
    p = Path(path)
    if p.suffix == ".jsonl":
        return read_jsonl(p)
    doc = json.loads(p.read_text())
    if not isinstance(doc, list):
        raise ValueError(f"{p}: expected a JSON list of records or a .jsonl file")
    return doc


class Stage:
    """Runs the steps of one stage on a pool; each step method is also a CLI subcommand."""

    def __init__(self, pool: PoolStore, cfg: StageConfig, progress: bool = True):
        self.pool, self.cfg, self.t, self.progress = pool, cfg, cfg.stage, progress
        self.dir = pool.stage_dir(self.t)

    # -- helpers -------------------------------------------------------------------------------
    def record(self, step: str, info: dict) -> None:
        """Set ``step``'s entry of the stage's ``record.json``."""
        path = self.dir / "record.json"
        rec = json.loads(path.read_text()) if path.exists() else {"stage": self.t}
        rec[step] = info
        write_json(path, rec)

    def timing(self, step: str, seconds: float) -> None:
        """Add a step's wall time to the stage's ``timings.json``."""
        path = self.dir / "timings.json"
        doc = json.loads(path.read_text()) if path.exists() else {}
        doc[step] = round(seconds, 4)
        write_json(path, doc)

    def features(self) -> FeatureSet:
        doc = json.loads((self.dir / "features.json").read_text())
        feats = torch.from_numpy(np.load(self.dir / "features.npy").astype(np.float32))
        return FeatureSet(doc["ids"], feats, {k: torch.tensor(v) for k, v in doc["scores"].items()}, [], {})

    def _model_featurizer(self) -> Callable[[list[dict]], FeatureSet]:
        if self.cfg.model is None:
            raise ValueError("the features step needs features_from (a .npz), model (a PEFT adapter folder) or a featurizer")
        from ..features import GradientFeaturizer
        from .models import load_peft_model

        model, tokenizer = load_peft_model(self.cfg.model)
        fz = GradientFeaturizer(model, layers=self.cfg.layers, out_dim=self.cfg.out_dim, seed=self.cfg.seed,
                                scores=self.cfg.scores, tokenizer=tokenizer, image_root=self.cfg.image_root,
                                max_length=self.cfg.max_length, rules=self.cfg.rules)
        shards = self.dir / "feature-shards"  # resumable: a killed features step keeps finished shards
        return lambda records: fz.extract(records, batch_size=self.cfg.feature_batch_size, out_dir=shards)

    def labels(self) -> torch.Tensor:
        return torch.from_numpy(np.load(self.dir / "labels.npy"))

    def n_clusters(self) -> int:
        """K of the stage's clustering (the release's rules walk clusters 0..K-1, empty ones too)."""
        return int(np.load(self.dir / "centroids.npy", mmap_mode="r").shape[0])

    def run(self, featurize: Callable[[list[dict]], FeatureSet] | None = None, steps=STEPS) -> dict:
        for step in steps:
            if self.pool.state.finished(self.t, step):
                log.info("stage %d: %s already done", self.t, step)
                continue
            t0 = time.perf_counter()
            _fault(f"{step}:start")
            getattr(self, f"step_{step}")(featurize) if step == "features" else getattr(self, f"step_{step}")()
            self.timing(step, time.perf_counter() - t0)
        return json.loads((self.dir / "record.json").read_text())

    def _begin(self, step: str) -> None:
        earlier = STEPS[: STEPS.index(step)]
        missing = [s for s in earlier if not self.pool.state.finished(self.t, s) and s != "add"]
        if missing:
            raise RuntimeError(f"stage {self.t}: run {missing[0]!r} before {step!r}")
        if self.t < self.pool.state.stage:
            raise RuntimeError(f"stage {self.t} is over (the pool is at stage {self.pool.state.stage})")
        if self.t > self.pool.state.stage + 1 or (self.t == self.pool.state.stage + 1 and self.pool.state.stage > 0
                                                  and not self.pool.state.finished(self.pool.state.stage, "prune")):
            raise RuntimeError(f"stage {self.pool.state.stage} is not finished; finish it before stage {self.t}")

    # -- steps ---------------------------------------------------------------------------------
    def step_add(self) -> None:
        self._begin("add")
        cfg = self.cfg
        rows = [dict(r) for r in self.pool.rows]
        info = {"source": cfg.source, "added": 0, "skipped": []}
        if cfg.data is not None:
            records = read_records(cfg.data)
            good, seen = [], {r["id"] for r in rows}
            duplicates = []
            for i, rec in enumerate(records):
                if not isinstance(rec, dict) or "id" not in rec:
                    info["skipped"].append([i, "record has no 'id'"])
                elif not ("conversations" in rec or "input_ids" in rec):
                    info["skipped"].append([rec["id"], "record has neither 'conversations' nor 'input_ids'"])
                elif rec["id"] in seen:
                    duplicates.append(rec["id"])
                else:
                    seen.add(rec["id"])
                    good.append(rec)
            if duplicates:
                raise ValueError(f"{len(duplicates)} duplicate id(s) in {cfg.data} or already in the pool "
                                 f"(first: {duplicates[:5]}); nothing was added")
            for item_id, why in info["skipped"]:
                log.warning("add: skipped %r: %s", item_id, why)
            write_jsonl(self.pool.root / "data" / f"{cfg.source}-{self.t:03d}.jsonl", good)
            rows += [{"id": r["id"], "source": cfg.source, "stage_added": self.t, "status": "pool",
                      "status_stage": self.t, "reason": None, "times_selected": 0} for r in good]
            info["added"] = len(good)
        self.record("add", info)
        _fault("add:artifacts")
        self.pool.commit(self.t, "add", rows)

    def _skip(self, step: str) -> None:
        self.record(step, {"skipped": f"method {self.cfg.method!r} without pruning needs no {step}"})
        self.pool.commit(self.t, step)

    def step_features(self, featurize: Callable[[list[dict]], FeatureSet] | None = None) -> None:
        self._begin("features")
        if not self.cfg.needs_features:
            return self._skip("features")
        ids = self.pool.ids()
        if self.cfg.features_from is not None:
            z = np.load(self.cfg.features_from, allow_pickle=False)
            fs = FeatureSet(z["ids"].tolist(), torch.from_numpy(z["features"].astype(np.float32)),
                            {n: torch.from_numpy(z[f"score_{n}"].astype(np.float32)) for n in self.cfg.scores if f"score_{n}" in z})
            index = {i: k for k, i in enumerate(fs.ids)}
            missing = [i for i in ids if i not in index]
            if missing or len(fs.ids) != len(index):
                raise ValueError(f"features in {self.cfg.features_from} do not match the pool: {len(missing)} pool id(s) "
                                 f"have no feature row (first: {missing[:3]}), {len(fs.ids)} rows for {len(ids)} samples")
            take = torch.tensor([index[i] for i in ids], dtype=torch.long)
            fs = FeatureSet(ids, fs.features[take], {n: v[take] for n, v in fs.scores.items()}, [], {})
        else:
            featurize = featurize or self._model_featurizer()
            fs = featurize(self.pool.records(ids))
        if len(fs) == 0:
            raise ValueError("no sample in the pool has features")
        write_json(self.dir / "features.json", {"ids": fs.ids, "scores": {k: v.tolist() for k, v in fs.scores.items()},
                                                "skipped": [list(s) for s in fs.skipped]})
        arr = fs.features.numpy().astype(np.float16)
        atomic_write(self.dir / "features.npy", lambda f: np.save(f, arr))
        self.record("features", {"samples": len(fs), "dim": int(fs.features.shape[1]), "skipped": len(fs.skipped)})
        _fault("features:artifacts")
        self.pool.commit(self.t, "features")

    def step_cluster(self) -> None:
        self._begin("cluster")
        if not self.cfg.needs_features:
            return self._skip("cluster")
        fs = self.features()
        if self.cfg.k > len(fs):
            raise ValueError(f"k={self.cfg.k} is larger than the pool ({len(fs)} samples with features)")
        km = KMeans(self.cfg.k, metric="cosine", n_init=3, seed=self.cfg.seed, progress=self.progress).fit(fs.features)
        atomic_write(self.dir / "labels.npy", lambda f: np.save(f, km.labels_.numpy()))
        atomic_write(self.dir / "centroids.npy", lambda f: np.save(f, km.cluster_centers_.numpy()))
        sizes = torch.bincount(km.labels_, minlength=self.cfg.k).tolist()
        self.record("cluster", {"k": self.cfg.k, "sizes": sizes, "inertia": round(km.inertia_, 4)})
        _fault("cluster:artifacts")
        self.pool.commit(self.t, "cluster")

    def step_select(self) -> None:
        self._begin("select")
        if self.cfg.needs_features:
            fs, labels = self.features(), self.labels()
        else:  # random / full: only the pool's ids matter
            ids = self.pool.ids()
            fs, labels = FeatureSet(ids, torch.zeros(len(ids), 0), {}, [], {}), torch.zeros(len(ids), dtype=torch.long)
        n = len(fs)
        gen = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + self.t)
        budget = self.cfg.budget
        info: dict[str, Any] = {"method": self.cfg.method, "budget": budget}
        if budget > n:
            log.warning("select: budget %d is larger than the pool (%d); selecting all", budget, n)
            info["note"] = f"budget capped at the pool size {n}"
            budget = n
        if self.cfg.rules == "release" and self.cfg.method not in ("random", "full", "semdedup"):
            chosen, extra = release_subset(fs.features, labels, fs.scores, method=self.cfg.method, budget=budget,
                                           k=self.n_clusters(), seed=self.cfg.seed, progress=self.progress,
                                           pool_budget=self.cfg.pool_budget if self.cfg.prune == "budget" else None)
        else:
            chosen, extra = select_subset(fs.features, labels, fs.scores, method=self.cfg.method, budget=budget,
                                          generator=gen, score_order=self.cfg.scores, eps=self.cfg.eps)
        info.update(extra)
        chosen_ids = [fs.ids[i] for i in sorted(chosen.tolist())]
        info["selected"] = len(chosen_ids)
        write_json(self.dir / "selection.json", {"ids": chosen_ids})
        self.record("select", info)
        picked = set(chosen_ids)
        rows = []
        for r in self.pool.rows:
            r = dict(r)
            if r["status"] != "pruned":
                if r["id"] in picked:
                    r.update(status="selected", status_stage=self.t, times_selected=r["times_selected"] + 1)
                elif r["status"] == "selected":
                    r.update(status="pool", status_stage=self.t)
            rows.append(r)
        _fault("select:artifacts")
        self.pool.commit(self.t, "select", rows)

    def step_prune(self) -> None:
        self._begin("prune")
        info: dict[str, Any] = {"mode": self.cfg.prune}
        if self.cfg.prune == "none":
            info.update(pruned=0, pool_after=len(self.pool.ids()))
            write_json(self.dir / "prune.json", {"ids": [], "reason": None})
            self.record("prune", info)
            return self.pool.commit(self.t, "prune")
        fs, labels = self.features(), self.labels()
        drop = prune_mask(fs.features, labels, mode=self.cfg.prune, pool_budget=self.cfg.pool_budget, eps=self.cfg.eps,
                          progress=self.progress, rules=self.cfg.rules,
                          k=self.n_clusters() if self.cfg.rules == "release" else None)
        reason = {"none": None, "budget": f"redundant: pool budget {self.cfg.pool_budget}",
                  "threshold": f"semdedup eps={self.cfg.eps}"}[self.cfg.prune]
        if self.cfg.prune == "budget":
            info["pool_budget"] = self.cfg.pool_budget
        elif self.cfg.prune == "threshold":
            info["eps"] = self.cfg.eps
        pruned = {fs.ids[i] for i in drop.nonzero().flatten().tolist()}
        info["pruned"] = len(pruned)
        write_json(self.dir / "prune.json", {"ids": [i for i in fs.ids if i in pruned], "reason": reason})
        rows = []
        for r in self.pool.rows:
            r = dict(r)
            if r["id"] in pruned:
                r.update(status="pruned", status_stage=self.t, reason=reason)
            rows.append(r)
        info["pool_after"] = sum(r["status"] != "pruned" for r in rows)
        self.record("prune", info)
        _fault("prune:artifacts")
        self.pool.commit(self.t, "prune", rows)


def run_stage(pool_dir: str | Path, cfg: StageConfig, featurize=None) -> dict:
    """Validate the config, then run (or resume) the whole stage."""
    cfg.validate()
    return Stage(PoolStore(pool_dir, create=True), cfg).run(featurize)


def config_from_dict(doc: dict) -> StageConfig:
    known = set(StageConfig.__dataclass_fields__)
    unknown = set(doc) - known
    if unknown:
        raise ValueError(f"invalid stage config: unknown keys {sorted(unknown)} (known: {sorted(known)})")
    if "stage" not in doc:
        raise ValueError("invalid stage config: 'stage' is required")
    cfg = StageConfig(**doc)
    cfg.validate()
    return cfg


def read_config(path: str | Path) -> dict:
    """The raw document of a YAML (.yaml/.yml) or TOML (.toml, Python >= 3.11) stage config."""
    p = Path(path)
    text = p.read_text()
    if p.suffix in (".yaml", ".yml"):
        import yaml

        doc = yaml.safe_load(text)
    elif p.suffix == ".toml":
        import tomllib

        doc = tomllib.loads(text)
    else:
        raise ValueError(f"{p}: expected a .yaml, .yml or .toml config")
    if not isinstance(doc, dict):
        raise ValueError(f"{p}: expected a mapping at the top level")
    return doc


def load_config(path: str | Path) -> list[StageConfig]:
    """The stages of a config file (a list ``stages`` of stage tables; other top-level keys except
    ``pool`` are defaults for every stage), all validated up front."""
    doc = read_config(path)
    stages = doc.get("stages")
    if not isinstance(stages, list) or not stages:
        raise ValueError(f"{path}: expected a non-empty list 'stages'")
    defaults = {k: v for k, v in doc.items() if k not in ("stages", "pool")}
    return [config_from_dict({**defaults, **s}) for s in stages]


__all__ = ["STEPS", "Stage", "StageConfig", "load_config", "read_config", "run_stage"]
