"""The whole lifelong loop (DESIGN §2), resumable: for every stage, on one pool directory,
add → features → cluster → select (``stage.py``) → train (``train.py``) → evaluate on every task
(``evaluate.py``) → prune; then the accuracy matrix, its metrics (``metrics.py``) and plots.

Layout of a run folder::

    run.json                 the configuration
    data/<task>-train.jsonl  validated records, image paths made absolute
    pool/                    the PoolStore (manifest, per-stage features, clusters, selection, pruning)
    adapters/stage-NNN/      the LoRA adapter after stage NNN (stage-000: before any stage)
    train/stage-NNN/         the training checkpoint of a stage (a killed run resumes from it)
    eval/stage-NNN.json      scores on every task after stage NNN (row NNN of the matrix)
    accuracy.json/.png       the matrix, metrics, relative gains vs ``baselines`` (other run folders)
    plots/, summary.json     the pool's plots; per-stage table, matrix, metrics, chance levels

Every artifact is written atomically and marks its step done, so a killed run started again with the
same arguments continues where it stopped and ends with the same adapters, pool and scores.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..data.llava import read_llava_json, validate_records
from ..features.batching import Encoder, encode_many
from .evaluate import SCORERS, evaluate, normalize_answer
from .metrics import plot_matrix, save_matrix
from .pool import PoolStore, write_json, write_jsonl
from .stage import SCORE_NAMES, Stage, StageConfig
from .train import TrainConfig, train_lora

log = logging.getLogger("adaptinf_fast")
POOL_STEPS = ("add", "features", "cluster", "select")
LLM_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class Task:
    """One stage's dataset: LLaVA records (a list, a ``datasets.Dataset`` or a JSON/JSONL path) for
    training and testing, with ``images`` the folder their image paths are relative to.
    ``overrides``: StageConfig fields for this stage only (e.g. ``budget``, ``k``, ``pool_budget``)."""

    name: str
    train: Any
    test: Any = None
    images: str | None = None
    overrides: dict = field(default_factory=dict)


@dataclass
class LoraSettings:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: Any = None  # default: the language model's attention and MLP projections

    def peft_config(self, model):
        from peft import LoraConfig

        targets = self.target_modules
        if targets is None:
            is_llava = getattr(model.config, "model_type", "") == "llava"
            names = "|".join(LLM_PROJECTIONS)
            targets = rf".*language_model.*\.({names})" if is_llava else list(LLM_PROJECTIONS)
        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=targets,
                          task_type=None)


@dataclass
class RunConfig:
    """Selection (``method`` .. ``eps``: see ``StageConfig``; ``pool_budget=None`` keeps the pool
    unpruned), features, LoRA, training, evaluation (``scorer`` name, ``eval_limit`` test records
    per task) and the seed of everything."""

    method: str = "adaptinf"
    k: int = 10
    budget: int = 1000
    pool_budget: int | None = None
    prune: str | None = None  # default: "budget" with a pool_budget, else "none"
    eps: float = 0.05
    scores: list = field(default_factory=lambda: list(SCORE_NAMES))
    layers: Any = "last"
    out_dim: int = 8192
    feature_batch_size: int = 8
    max_length: int | None = None
    lora: LoraSettings = field(default_factory=LoraSettings)
    train: TrainConfig = field(default_factory=TrainConfig)
    scorer: str = "exact_match"
    max_new_tokens: int = 16
    eval_limit: int | None = None
    seed: int = 0
    rules: str = "adaptinf"

    def stage_config(self, t: int, task: Task, data: Path) -> StageConfig:
        prune = self.prune or ("budget" if self.pool_budget is not None else "none")
        cfg = StageConfig(stage=t, data=str(data), source=task.name, layers=self.layers, out_dim=self.out_dim,
                          feature_batch_size=self.feature_batch_size, max_length=self.max_length, k=self.k,
                          method=self.method, budget=self.budget, scores=list(self.scores), prune=prune,
                          pool_budget=self.pool_budget, eps=self.eps, seed=self.seed, rules=self.rules)
        unknown = set(task.overrides) - set(StageConfig.__dataclass_fields__) - {"stage", "data", "source"}
        if unknown:
            raise ValueError(f"task {task.name!r}: unknown stage settings {sorted(unknown)}")
        return replace(cfg, **task.overrides)

    def validate(self) -> None:
        self.train.validate()
        if self.scorer not in SCORERS:
            raise ValueError(f"scorer is {self.scorer!r}; expected one of {sorted(SCORERS)}")
        if self.eval_limit is not None and self.eval_limit < 1:
            raise ValueError(f"eval_limit is {self.eval_limit}; expected >= 1 or None")


def _records(src: Any, images: str | None, what: str) -> list[dict]:
    if src is None:
        return []
    if isinstance(src, (str, Path)):
        recs, report = read_llava_json(src, images)
    else:
        recs, report = validate_records(src, images)
    if report.skipped:
        log.warning("%s: %s", what, report)
    if not recs:
        raise ValueError(f"{what}: no usable record ({report})")
    root = Path(images) if images else None
    out = []
    for r in recs:  # absolute image paths: the pool mixes datasets with different image folders
        r = dict(r)
        if r.get("image") and root is not None:
            r["image"] = str((root / r["image"]).resolve())
        out.append(r)
    return out


def chance_level(records: Sequence[dict]) -> float:
    """Accuracy of the best constant answer on ``records`` (the majority answer's share)."""
    answers = Counter(normalize_answer(r["conversations"][-1]["value"]) for r in records)
    return max(answers.values()) / len(records) if records else float("nan")


class LifelongRun:
    """Run (or resume) the lifelong loop in ``out_dir`` over ``tasks`` (one stage each).

    ``load_base()`` returns ``(model, tokenizer)``: the base model (a causal LM or
    ``LlavaForConditionalGeneration``, frozen here) and its tokenizer; a LoRA adapter is added
    (``cfg.lora``, or ``adapter``: a saved PEFT adapter folder to start from) and carried over
    from stage to stage.
    """

    def __init__(self, out_dir: str | Path, tasks: Sequence[Task], cfg: RunConfig,
                 load_base: Callable[[], tuple[Any, Any]], *, adapter: str | Path | None = None,
                 baselines: dict[str, str | Path] | None = None, progress: bool = True,
                 say: Callable[[str], None] = print):
        if not tasks:
            raise ValueError("no tasks")
        names = [t.name for t in tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"task names must be unique; got {names}")
        cfg.validate()
        self.out, self.tasks, self.cfg, self.load_base = Path(out_dir), list(tasks), cfg, load_base
        self.adapter, self.progress, self.say = adapter, progress, say
        self.baselines = {name: Path(d) for name, d in (baselines or {}).items()}
        for name, d in self.baselines.items():
            if not (d / "accuracy.json").exists():
                raise FileNotFoundError(f"baseline {name!r}: {d} holds no accuracy.json (a finished run folder)")

    # -- set-up ------------------------------------------------------------------------------------
    def _prepare(self) -> dict[str, list[dict]]:
        """Validate every task's data up front; write the training records for the pool."""
        self.out.mkdir(parents=True, exist_ok=True)

        def source(data: Any) -> str:
            return str(data) if isinstance(data, (str, Path)) else f"{len(data or [])} records in memory"

        doc = {"tasks": [{"name": t.name, "train": source(t.train), "test": source(t.test), "images": t.images,
                          "overrides": t.overrides} for t in self.tasks], "config": asdict(self.cfg)}
        write_json(self.out / "run.json", doc)
        tests = {}
        for task in self.tasks:
            path = self._train_file(task)
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                write_jsonl(path, _records(task.train, task.images, f"task {task.name!r} train"))
            if task.test is None:
                raise ValueError(f"task {task.name!r} has no test records: the accuracy matrix needs every task's score")
            tests[task.name] = _records(task.test, task.images, f"task {task.name!r} test")[: self.cfg.eval_limit]
        for t, task in enumerate(self.tasks, 1):
            self.cfg.stage_config(t, task, self._train_file(task)).validate()
        return tests

    def _train_file(self, task: Task) -> Path:
        return self.out / "data" / f"{task.name}-train.jsonl"

    def _adapter_dir(self, t: int) -> Path:
        return self.out / "adapters" / f"stage-{t:03d}"

    def _model(self):
        from peft import PeftModel, get_peft_model

        base, tokenizer = self.load_base()
        for p in base.parameters():
            p.requires_grad_(False)
        if self.adapter is not None:
            model = PeftModel.from_pretrained(base, str(self.adapter), is_trainable=True)
        else:
            torch.manual_seed(self.cfg.seed)  # the initial adapter is a function of the seed
            model = get_peft_model(base, self.cfg.lora.peft_config(base))
        if not self._adapter_dir(0).exists():
            self._save_adapter(model, 0)
        return model, tokenizer

    def _save_adapter(self, model, t: int) -> None:
        final = self._adapter_dir(t)
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        tmp.replace(final)  # the rename marks the adapter (and the stage's training) done

    def _load_adapter(self, model, t: int) -> None:
        from peft.utils import load_peft_weights, set_peft_model_state_dict

        result = set_peft_model_state_dict(model, load_peft_weights(str(self._adapter_dir(t))))
        missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
        if missing:
            raise RuntimeError(f"{self._adapter_dir(t)} does not match the model: {len(missing)} LoRA weights missing")

    # -- steps of a stage ------------------------------------------------------------------------
    def _featurizer(self, model, tokenizer, stage: Stage):
        from ..features import GradientFeaturizer

        c = self.cfg
        fz = GradientFeaturizer(model, layers=c.layers, out_dim=c.out_dim, seed=c.seed, scores=c.scores,
                                tokenizer=tokenizer, max_length=c.max_length, rules=c.rules)
        return lambda records: fz.extract(records, batch_size=c.feature_batch_size, out_dir=stage.dir / "feature-shards",
                                          progress=self.progress)

    def _train(self, model, encoder: Encoder, pool: PoolStore, stage: Stage, t: int) -> dict:
        ids = json.loads((stage.dir / "selection.json").read_text())["ids"]
        skipped: list = []
        _, items = encode_many([(r["id"], r) for r in pool.records(ids)], encoder, lambda i, why: skipped.append((i, why)))
        for item_id, why in skipped:
            log.warning("train: skipped %r: %s", item_id, why)
        cfg = replace(self.cfg.train, seed=self.cfg.train.seed + t, pad_token_id=encoder.pad_token_id)
        res = train_lora(model, items, cfg, ckpt_dir=self.out / "train" / f"stage-{t:03d}", progress=self.progress)
        return {"samples": len(items), "skipped": len(skipped), "steps": res["steps"],
                "final_loss": round(res["losses"][-1], 4) if res["losses"] else None}

    def _evaluate(self, model, encoder: Encoder, tests: dict[str, list], t: int) -> dict:
        path = self.out / "eval" / f"stage-{t:03d}.json"
        if path.exists():
            return json.loads(path.read_text())
        t0 = time.perf_counter()
        doc: dict[str, Any] = {"stage": t, "scores": {}, "examples": {}}
        for name, recs in tests.items():
            res = evaluate(model, encoder, recs, self.cfg.scorer, self.cfg.max_new_tokens, progress=self.progress,
                           desc=f"evaluate {name}")
            doc["scores"][name] = res["score"]
            doc["examples"][name] = res["answers"][:5]
        doc["seconds"] = round(time.perf_counter() - t0, 3)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, doc)
        return doc

    # -- the loop ----------------------------------------------------------------------------------
    def run(self) -> dict:
        tests = self._prepare()
        model, tokenizer = self._model()
        encoder = Encoder.for_model(model, tokenizer, max_length=self.cfg.max_length)
        pool = PoolStore(self.out / "pool", create=True)
        self._load_adapter(model, 0)
        rows = [self._evaluate(model, encoder, tests, 0)]
        stages = []
        for t, task in enumerate(self.tasks, 1):
            stage = Stage(pool, self.cfg.stage_config(t, task, self._train_file(task)), progress=self.progress)
            if not self._adapter_dir(t).exists():
                self._load_adapter(model, t - 1)  # features and training start from the previous stage's adapter
                stage.run(self._featurizer(model, tokenizer, stage), steps=POOL_STEPS)
                t0 = time.perf_counter()
                info = self._train(model, encoder, pool, stage, t)
                stage.record("train", info)
                stage.timing("train", time.perf_counter() - t0)
                self._save_adapter(model, t)
            self._load_adapter(model, t)
            ev = self._evaluate(model, encoder, tests, t)
            stage.timing("evaluate", ev["seconds"])
            stage.run(steps=("prune",))
            rows.append(ev)
            stages.append(self._stage_row(stage, task))
            self.say(format_stage_row(stages[-1], header=len(stages) == 1))
        return self._finish(rows, stages, tests)

    def _stage_row(self, stage: Stage, task: Task) -> dict:
        rec = json.loads((stage.dir / "record.json").read_text())
        times = json.loads((stage.dir / "timings.json").read_text())
        pool_in = rec["prune"]["pool_after"] + rec["prune"]["pruned"]
        return {"stage": stage.t, "task": task.name, "added": rec["add"]["added"], "pool": pool_in,
                "selected": rec["select"]["selected"], "trained_on": rec.get("train", {}).get("samples"),
                "pruned": rec["prune"]["pruned"], "pool_after": rec["prune"]["pool_after"],
                "seconds": {k: times.get(k) for k in ("features", "cluster", "select", "train", "evaluate", "prune")}}

    def _finish(self, rows: list[dict], stages: list[dict], tests: dict[str, list]) -> dict:
        names = [t.name for t in self.tasks]
        a = np.array([[r["scores"][n] for n in names] for r in rows], dtype=np.float64)
        baselines = {}
        for name, d in self.baselines.items():
            other = json.loads((d / "accuracy.json").read_text())
            if other["tasks"] != names:
                raise ValueError(f"baseline {name!r} ran tasks {other['tasks']}, this run {names}")
            baselines[name] = np.array(other["accuracy"])
        doc = save_matrix(self.out / "accuracy.json", a, names, baselines)
        plot_matrix(self.out / "accuracy.png", a, names, title=f"{self.cfg.method}: score after each stage")
        from .plots import write_plots

        plots = write_plots(self.out / "pool", self.out / "plots")
        summary = {"method": self.cfg.method, "tasks": names, "accuracy": a.tolist(), "metrics": doc["metrics"],
                   "relative_gain": doc["relative_gain"],
                   "chance": {n: chance_level(tests[n]) for n in names}, "stages": stages,
                   "trained_samples": sum(s["trained_on"] or 0 for s in stages),
                   "final_pool": stages[-1]["pool_after"], "plots": [str(p) for p in plots] + [str(self.out / "accuracy.png")]}
        write_json(self.out / "summary.json", summary)
        return summary


def format_stage_row(row: dict, header: bool = False) -> str:
    cols = ("features", "cluster", "select", "train", "evaluate", "prune")
    line = (f"{row['stage']:>5}  {row['task']:<12} {row['added']:>5} {row['pool']:>5} {row['selected']:>8} "
            f"{row['pruned']:>6} {row['pool_after']:>9}  " +
            " ".join(f"{row['seconds'][c]:>8.2f}" if row["seconds"][c] is not None else f"{'-':>8}" for c in cols))
    if not header:
        return line
    head = (f"{'stage':>5}  {'task':<12} {'added':>5} {'pool':>5} {'selected':>8} {'pruned':>6} {'pool after':>9}  "
            + " ".join(f"{c[:8]:>8}" for c in cols) + "   (seconds per step)")
    return head + "\n" + line


def format_matrix(res: dict) -> str:
    names = res["tasks"]
    lines = ["score after each stage (rows) on each task (columns); chance = best constant answer",
             f"{'':>9}" + "".join(f"{n:>12}" for n in names),
             f"{'chance':>9}" + "".join(f"{res['chance'][n]:>12.2f}" for n in names)]
    for t, row in enumerate(res["accuracy"]):
        lines.append(f"{'before' if t == 0 else f'stage {t}':>9}" + "".join(f"{v:>12.2f}" for v in row))
    lines.append("metrics: " + ", ".join(f"{k} {v:+.3f}" if k in ("BWT", "FWT") else f"{k} {v:.3f}"
                                         for k, v in res["metrics"].items()))
    return "\n".join(lines)
