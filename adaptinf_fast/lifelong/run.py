"""The whole lifelong loop (DESIGN §2), resumable: a loop over tasks, each one stage of steps
(``steps.py``: add → features → cluster → select → train → evaluate → prune) on one pool, then the
accuracy matrix, its metrics (``metrics.py``) and plots.

Layout of a run folder::

    run.json                 the configuration
    .lock                    held while a process works here (a second one stops at once)
    data/<task>-train.jsonl  validated records, image paths made absolute
    pool/                    the PoolStore; pool/stages/stage-NNN/ holds everything stage NNN wrote:
                             features, clusters, selection.json, train-ckpt/, adapter/ (the LoRA
                             adapter after the stage), eval.json (scores on every task: row NNN of
                             the matrix), prune.json, record.json; stage-000: the adapter and the
                             evaluation before any stage
    accuracy.json/.png       the matrix, metrics, relative gains vs ``baselines`` (other run folders)
    plots/, summary.json     the pool's plots; per-stage table, matrix, metrics, chance levels

Every step commits through ``pool.json``, so a killed run started again with the same arguments
continues at the first uncommitted step and ends with the same adapters, pool and scores.
Launched with ``torchrun``/``accelerate launch``, every process runs the loop: features, training
(DDP) and evaluation are split across them, rank 0 writes.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .._io import FolderLock, atomic_dir, read_jsonl, write_json, write_jsonl
from ..data.encoder import Encoder, encode_many
from ..data.llava import read_llava_json, validate_records
from .config import RunConfig, StageConfig
from . import strategies
from .evaluate import evaluate, evaluate_tasks, normalize_answer
from .scoring import score_task
from .metrics import plot_matrix, save_matrix
from .pool import PoolStore
from .steps import STEPS, Context, StageDir, run_steps
from .train import train_lora

log = logging.getLogger("adaptinf_fast")


@dataclass
class Task:
    """One stage's dataset: LLaVA records (a list, a ``datasets.Dataset`` or a JSON/JSONL path) for
    training and testing, with ``images`` the folder their image paths are relative to.
    ``overrides``: selection settings for this stage only (e.g. ``budget``, ``k``, ``pool_budget``)."""

    name: str
    train: Any
    test: Any = None
    images: str | None = None
    overrides: dict = field(default_factory=dict)
    metric: str | None = None  # the task's evaluation metric (scoring.METRICS); default: eval.scorer


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
            absolute = [str((root / x).resolve()) for x in ([r["image"]] if isinstance(r["image"], str) else r["image"])]
            r["image"] = absolute[0] if isinstance(r["image"], str) else absolute
        out.append(r)
    return out


def chance_level(records: Sequence[dict], metric: str = "exact_match") -> float:
    """The score of answering every record with its task's most common answer (under exact match:
    the majority answer's share), by the task's metric."""
    if not records:
        return float("nan")
    refs = [r["conversations"][-1]["value"] for r in records]
    common = Counter(normalize_answer(a) for a in refs).most_common(1)[0][0]
    constant = next(a for a in refs if normalize_answer(a) == common)
    return score_task(metric, [constant] * len(refs), refs, records)[0]


def _init_distributed():
    """The process group of a ``torchrun``/``accelerate launch`` job (gloo on CPU), or None."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 else None


class LifelongRun:
    """Run (or resume) the lifelong loop in ``out_dir`` over ``tasks`` (one stage each).

    ``load_base()`` returns ``(model, tokenizer)`` or ``(model, tokenizer, image_processor)``: the
    base model (a causal LM or ``LlavaForConditionalGeneration``, frozen here), its tokenizer and,
    when the model folder has one, its image processor. A LoRA adapter is added (``cfg.lora``, or
    ``adapter``: a saved PEFT adapter folder to start from) and carried over from stage to stage.
    """

    def __init__(self, out_dir: str | Path, tasks: Sequence[Task], cfg: RunConfig,
                 load_base: Callable[[], tuple], *, adapter: str | Path | None = None,
                 baselines: dict[str, str | Path] | None = None, progress: bool = True,
                 say: Callable[[str], None] = print, model_info: dict | None = None):
        if not tasks:
            raise ValueError("no tasks")
        names = [t.name for t in tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"task names must be unique; got {names}")
        self.out, self.tasks, self.cfg, self.load_base = Path(out_dir), list(tasks), cfg, load_base
        self.adapter, self.progress, self.say = adapter, progress, say
        self.model_info = model_info  # how to load the base again (``adaptinf-fast merge``), kept in run.json
        self.baselines = {name: Path(d) for name, d in (baselines or {}).items()}
        for name, d in self.baselines.items():
            if not (d / "accuracy.json").exists():
                raise FileNotFoundError(f"baseline {name!r}: {d} holds no accuracy.json (a finished run folder)")
        for t, task in enumerate(self.tasks, 1):  # every stage's settings checked before any work
            cfg.stage_config(t, task.name, None, task.overrides)
        self.dist, self.rank, self.image_processor = None, 0, None
        self.strategy, self.pool = None, None  # set by run()

    # -- set-up ------------------------------------------------------------------------------------
    def _prepare(self) -> dict[str, list[dict]]:
        """Validate every task's data up front; rank 0 writes the training records for the pool."""
        def source(data: Any) -> str:
            return str(data) if isinstance(data, (str, Path)) else f"{len(data or [])} records in memory"

        tests = {}
        for task in self.tasks:
            if task.test is None:
                raise ValueError(f"task {task.name!r} has no test records: the accuracy matrix needs every task's score")
            tests[task.name] = _records(task.test, task.images, f"task {task.name!r} test")[: self.cfg.eval.limit]
        if self.rank == 0:
            doc = {"tasks": [{"name": t.name, "train": source(t.train), "test": source(t.test), "images": t.images,
                              "overrides": t.overrides, **({"metric": t.metric} if t.metric else {})}
                             for t in self.tasks], "config": self.cfg.model_dump(),
                   **({"model": self.model_info} if self.model_info else {})}
            write_json(self.out / "run.json", doc)
            for task in self.tasks:
                path = self._train_file(task)
                if not path.exists():
                    write_jsonl(path, _records(task.train, task.images, f"task {task.name!r} train"))
                if not self.test_file(task.name).exists():  # a strategy re-applied later evaluates on them
                    write_jsonl(self.test_file(task.name), tests[task.name])
        self.barrier()
        return tests

    def _train_file(self, task: Task) -> Path:
        return self.out / "data" / f"{task.name}-train.jsonl"

    def test_file(self, name: str) -> Path:
        return self.out / "data" / f"{name}-test.jsonl"

    def barrier(self) -> None:
        if self.dist:
            self.dist.barrier()

    def _model(self):
        from peft import PeftModel, get_peft_model

        loaded = self.load_base()
        base, tokenizer = loaded[0], loaded[1]
        self.image_processor = loaded[2] if len(loaded) > 2 else None
        for p in base.parameters():
            p.requires_grad_(False)
        if self.adapter is not None:
            model = PeftModel.from_pretrained(base, str(self.adapter), is_trainable=True)
        else:
            torch.manual_seed(self.cfg.seed)  # the initial adapter is a function of the seed
            model = get_peft_model(base, self.cfg.lora.peft_config(base, experts=self.strategy.experts,
                                                                   projections=self.strategy.projections))
        return model, tokenizer

    def _save_adapter(self, model, sd: StageDir) -> None:
        if self.rank == 0:
            atomic_dir(sd.adapter, model.save_pretrained)  # the rename marks the adapter complete
        self.barrier()

    def load_state(self, model, state: dict, source: Path) -> None:
        from peft.utils import set_peft_model_state_dict

        result = set_peft_model_state_dict(model, state)
        missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
        if missing:
            raise RuntimeError(f"{source} does not match the model: {len(missing)} LoRA weights missing")

    def load_adapter(self, model, sd: StageDir) -> None:
        from peft.utils import load_peft_weights

        self.load_state(model, load_peft_weights(str(sd.adapter)), sd.adapter)

    def task_adapters(self, sd: StageDir) -> list[dict]:
        from peft.utils import load_peft_weights

        return [load_peft_weights(str(StageDir(sd.pool, i).adapter)) for i in range(1, sd.t + 1)]

    def scale(self, model) -> float:
        cfg = model.peft_config["default"]
        return cfg.lora_alpha / cfg.r

    def task_records(self, t: int) -> list[dict]:
        """The training records of stage ``t``'s own task (a strategy's anchors and probes; the
        stage's selection also holds earlier tasks' records from the pool)."""
        return read_jsonl(self._train_file(self.tasks[t - 1]))

    # -- what the model-side steps do ----------------------------------------------------------------
    def _context(self, pool: PoolStore, model, tokenizer, encoder: Encoder, tests: dict) -> Context:
        from ..features import GradientFeaturizer

        c = self.cfg

        def featurize(sd: StageDir, records: list) -> Any:
            route = self.strategy.use(model, StageDir(pool, sd.t - 1))  # the model after the previous stage
            cfg = self.stage_configs[sd.t - 1]
            # the run's encoder (a strategy may reserve prompt positions in it), at the stage's max_length
            fz = GradientFeaturizer(model, layers=cfg.layers, out_dim=cfg.out_dim, seed=c.seed, scores=cfg.scores,
                                    tokenizer=tokenizer, rules=cfg.rules, encoder=encoder)
            run_length, encoder.max_length = encoder.max_length, cfg.max_length
            try:
                return fz.extract(records, batch_size=cfg.batch_size, out_dir=sd.shards, progress=self.progress,
                                  before_batch=route, disk_dtype=cfg.dtype, lazy=True)
            finally:
                encoder.max_length = run_length

        def train(sd: StageDir, cfg: StageConfig) -> dict:
            self.load_adapter(model, StageDir(pool, self.strategy.train_from(sd.t)))
            skipped: list = []
            records = pool.records(sd.selection())
            ids, items = encode_many([(r["id"], r) for r in records], encoder, lambda i, why: skipped.append((i, why)))
            for item_id, why in skipped:
                log.warning("train: skipped %r: %s", item_id, why)
            for rid, item in zip(ids, items):  # which record each item is (a strategy's per-row hooks)
                item["_id"] = rid
            tc = c.train.model_copy(update={"seed": c.train.seed + sd.t, "pad_token_id": encoder.pad_token_id})
            with self.strategy.training(sd.t):
                collate_fn, extra_loss = self.strategy.train_hooks(sd.t, records, encoder.collate)
                res = train_lora(model, items, tc, ckpt_dir=sd.train_ckpt, progress=self.progress,
                                 log_dir=self.out / "logs" / f"stage-{sd.t:03d}", collate_fn=collate_fn,
                                 extra_loss=extra_loss)
            self._save_adapter(model, sd)
            return {"samples": len(items), "skipped": len(skipped), "steps": res["steps"],
                    "final_loss": round(res["losses"][-1], 4) if res["losses"] else None}

        def evaluate_step(sd: StageDir, cfg: StageConfig | None = None) -> dict:
            t0 = time.perf_counter()
            doc: dict[str, Any] = {"stage": sd.t, "strategy": c.strategy, "scores": {}, "examples": {}}
            if sd.t > 0:
                self.strategy.deploy(model, encoder, sd)
            route = self.strategy.use(model, sd)
            doc.update(evaluate_tasks(model, encoder, tests, c.eval, progress=self.progress, evaluate_fn=evaluate,
                                      before_batch=route, metrics={t.name: t.metric for t in self.tasks if t.metric}))
            doc.update(self.strategy.report(sd, tests))
            doc["seconds"] = round(time.perf_counter() - t0, 3)
            if self.rank == 0:
                write_json(sd.eval_json, doc)
            return {"scores": doc["scores"], **({"routing": doc["routing"]} if "routing" in doc else {})}

        return Context(pool, progress=self.progress, featurize=featurize, train=train, evaluate=evaluate_step)

    def _initial(self, ctx: Context, model) -> None:
        """Stage 0: the starting adapter and its evaluation, committed like any step."""
        sd = StageDir(ctx.pool, 0)
        if not ctx.pool.state.finished(0, "train"):
            self._save_adapter(model, sd)
            if self.rank == 0:
                sd.set_record("train", {"initial": str(self.adapter) if self.adapter else "new LoRA adapter"})
                ctx.pool.commit(0, "train")
        if not ctx.pool.state.finished(0, "evaluate"):
            info = ctx.evaluate(sd)
            if self.rank == 0:
                sd.set_record("evaluate", info)
                ctx.pool.commit(0, "evaluate")
        self.barrier()
        if self.rank != 0:
            ctx.pool.reload()

    # -- the loop ----------------------------------------------------------------------------------
    def run(self) -> dict:
        """Run or resume every stage; returns the summary (``summary.json``) on rank 0, {} on the
        other ranks of a multi-process launch."""
        self.dist = _init_distributed()
        self.rank = self.dist.get_rank() if self.dist else 0
        self.out.mkdir(parents=True, exist_ok=True)
        with _rank0_lock(self.out, self.dist):
            tests = self._prepare()
            self.stage_configs = [self.cfg.stage_config(t, task.name, self._train_file(task), task.overrides)
                                  for t, task in enumerate(self.tasks, 1)]
            self.strategy = strategies.get(self.cfg.strategy)(self, self.cfg.strategy)
            model, tokenizer = self._model()
            encoder = Encoder.for_model(model, tokenizer, max_length=self.cfg.features.max_length,
                                        image_processor=self.image_processor)
            if self.rank == 0:
                PoolStore(self.out / "pool", create=True)
            self.barrier()
            pool = self.pool = PoolStore(self.out / "pool")
            self.strategy.setup(model, encoder, fresh=self.adapter is None)
            ctx = self._context(pool, model, tokenizer, encoder, tests)
            self._initial(ctx, model)
            stages = []
            for t, (task, cfg) in enumerate(zip(self.tasks, self.stage_configs), 1):
                run_steps(cfg, ctx, STEPS, STEPS)
                stages.append(self._stage_row(StageDir(pool, t), task))
                if self.rank == 0:
                    self.say(format_stage_row(stages[-1], header=len(stages) == 1))
            rows = [json.loads(StageDir(pool, t).eval_json.read_text()) for t in range(len(self.tasks) + 1)]
            return self._finish(rows, stages, tests) if self.rank == 0 else {}

    def _stage_row(self, sd: StageDir, task: Task) -> dict:
        rec, times = sd.record(), sd.timings()
        pool_in = rec["prune"]["pool_after"] + rec["prune"]["pruned"]
        return {"stage": sd.t, "task": task.name, "added": rec["add"]["added"], "pool": pool_in,
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
        task_metrics = {t.name: t.metric or self.cfg.eval.scorer for t in self.tasks}
        doc = save_matrix(self.out / "accuracy.json", a, names, baselines, task_metrics=task_metrics)
        plot_matrix(self.out / "accuracy.png", a, names, title=f"{self.cfg.selection.method}, {self.cfg.strategy}: score after each stage")
        from .plots import write_plots

        plots = write_plots(self.out / "pool", self.out / "plots")
        routing = {r["stage"]: r["routing"] for r in rows if "routing" in r}
        summary = {"method": self.cfg.selection.method, "strategy": self.cfg.strategy, "tasks": names,
                   "task_metrics": task_metrics,
                   **({"routing": routing} if routing else {}), "accuracy": a.tolist(), "metrics": doc["metrics"],
                   "relative_gain": doc["relative_gain"],
                   "chance": {n: chance_level(tests[n], task_metrics[n]) for n in names}, "stages": stages,
                   "trained_samples": sum(s["trained_on"] or 0 for s in stages),
                   "final_pool": stages[-1]["pool_after"], "plots": [str(p) for p in plots] + [str(self.out / "accuracy.png")]}
        write_json(self.out / "summary.json", summary)
        return summary




class _rank0_lock:
    """The run folder's lock, held by rank 0; every rank stops if rank 0 cannot take it."""

    def __init__(self, folder: Path, dist):
        self.lock, self.dist = FolderLock(folder, "run"), dist

    def __enter__(self):
        err = None
        if not self.dist or self.dist.get_rank() == 0:
            try:
                self.lock.__enter__()
            except RuntimeError as exc:
                err = str(exc)
        if self.dist:
            box = [err]
            self.dist.broadcast_object_list(box, src=0)
            err = box[0]
        if err is not None:
            from .._io import FolderBusyError

            raise FolderBusyError(err)
        return self

    def __exit__(self, *exc):
        if not self.dist or self.dist.get_rank() == 0:
            self.lock.__exit__(*exc)


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
