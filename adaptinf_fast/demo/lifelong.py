"""``adaptinf-fast demo``: the whole Adapt-∞ lifelong loop on a tiny LLaVA and built-in tasks, offline.

Stage 0 pre-trains every weight of a randomly initialised tiny LLaVA (vision tower, projector,
language model) on captions of the task images, so the LoRA stages have a base to adapt. Then each
task (digits, colours, counting, successor) is one stage of ``LifelongRun``: added to the pool,
features → clusters → selection → LoRA training → evaluation on every task → pruning. With
``compare``, the baselines ("random": the same budget drawn at random from the unpruned pool;
"full": the whole unpruned pool) and the model-side strategies ("sequential" is the default run;
"merge:average", "merge:ties", "merge:copa", "hide": Adapt-∞ selection with that strategy,
``lifelong/strategies/``) run on the same data from the same base and initial adapter. A routed
strategy (hide) routes with a tiny CLIP trained on the stage-0 captions (``demo/clip.py``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Literal

from pydantic import Field, model_validator

import numpy as np

from ..data.demo_tasks import EXTRA_TASKS, TASK_METRICS, TASKS, make_tasks, vocabulary, word_tokenizer
from ..data.encoder import Encoder, encode_many
from ..lifelong.composition import format_composition, format_shares
from ..lifelong.metrics import relative_gain
from ..lifelong.models import pick_device
from .._io import atomic_dir, write_json
from ..lifelong.config import RunConfig, Strict, TrainConfig
from ..lifelong.run import LifelongRun, Task, format_matrix
from ..lifelong.strategies import STRATEGIES
from ..lifelong.train import train_lora
from .clip import pretrained_clip
from .model import tiny_llava

BASELINES = ("random", "full")  # the strategies (lifelong.strategies.STRATEGIES) run with Adapt-∞ selection
# Where Adapt-∞'s claim can show: three small tasks of distinct answer formats (digit names, colours,
# counts), then a large, redundant one (yes/no questions about squares, each in three phrasings:
# 6 x 40 records), with a per-stage budget and a pool budget well below the pool. Not `captions`: stage 0
# pre-trains on those very captions, and its score (the COCO metrics' mean, CIDEr up to 10) is not on
# the other tasks' [0, 1] scale, so it would dominate every average (a 3-seed run with it: README).
SCENARIOS = {"imbalanced": {"tasks": ("digits", "colours", "counting", "rephrased"), "n_train": 40,
                            "budget": 40, "pool_budget": 120, "k": 8}}


class DemoConfig(Strict):
    """The demo's settings (the CLI's flags), checked like every config."""

    out: Path = Path("adaptinf-demo")
    tasks: tuple[str, ...] = TASKS
    n_train: int = Field(120, ge=1)
    n_test: int = Field(40, ge=1)
    hidden: int = Field(64, ge=1)
    pretrain_epochs: int = Field(40, ge=1)
    epochs: int = Field(30, ge=1)
    lr: float = Field(3e-3, gt=0)
    budget: int = Field(160, ge=1)
    pool_budget: int = Field(240, ge=1)
    k: int = Field(10, ge=1)
    out_dim: int = Field(1024, ge=1)
    compare: tuple[str, ...] = ()
    seed: int = 0
    # the release's rules need 10 samples in every cluster (its preview draw): the demo's pools are smaller
    rules: Literal["adaptinf", "release"] = "adaptinf"
    progress: bool = True
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: the GPU when one is visible (bf16 autocast there)
    seeds: int = Field(1, ge=1)  # independent runs at seed, seed + 1, ...: mean ± std over them
    scenario: Literal["default", "imbalanced"] = "default"
    extra: dict = Field(default_factory=dict)  # RunConfig sections to override (tests)

    @model_validator(mode="after")
    def _scenario(self):
        """``imbalanced``: its tasks and sizes, for every setting not given explicitly."""
        if self.scenario == "imbalanced":
            for name, value in SCENARIOS["imbalanced"].items():
                if name not in self.model_fields_set:
                    object.__setattr__(self, name, value)
        return self

    @model_validator(mode="after")
    def _check(self):
        unknown = set(self.tasks) - set(TASKS) - set(EXTRA_TASKS)
        if unknown or not self.tasks:
            raise ValueError(f"tasks must be a non-empty subset of {TASKS + EXTRA_TASKS}; got {list(self.tasks)}")
        bad = set(self.compare) - set(BASELINES) - set(STRATEGIES)
        if bad:
            raise ValueError(f"--compare takes {', '.join(BASELINES + STRATEGIES)}; got {sorted(bad)}")
        return self


def pretrained_base(cfg: DemoConfig, describe: list[dict], tokenizer, say: Callable[[str], None]) -> Callable:
    """Stage 0: pre-train the whole tiny model on the caption task once (resumable), save it under
    ``out/base``; returns a loader of that base for every run."""
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    base_dir = cfg.out / "base"
    if not (base_dir / "config.json").exists():
        t0 = time.perf_counter()
        model = tiny_llava(tokenizer, hidden=cfg.hidden, seed=cfg.seed).to(pick_device(cfg.device))
        encoder = Encoder.for_model(model, tokenizer, image_root=cfg.out / "tasks")
        problems: list = []
        _, items = encode_many([(r["id"], r) for r in describe], encoder, lambda i, why: problems.append((i, why)))
        if problems:
            raise RuntimeError(f"{len(problems)} caption record(s) could not be encoded (first: {problems[0]})")
        train = TrainConfig(lr=cfg.lr, epochs=cfg.pretrain_epochs, batch_size=16, warmup_ratio=0.05, seed=cfg.seed,
                            pad_token_id=tokenizer.pad_token_id, save_every=100)
        res = train_lora(model, items, train, ckpt_dir=cfg.out / "pretrain", progress=cfg.progress,
                         collate_fn=encoder.collate)
        def save(folder: Path) -> None:
            model.save_pretrained(folder)
            tokenizer.save_pretrained(folder)

        atomic_dir(base_dir, save)
        say(f"stage 0: pre-trained all {sum(p.numel() for p in model.parameters()):,} weights of the tiny LLaVA on "
            f"{len(items)} captions, {res['steps']} steps, loss {res['losses'][0]:.2f} → {res['losses'][-1]:.3f} "
            f"({time.perf_counter() - t0:.1f} s)")
    else:
        saved = AutoTokenizer.from_pretrained(base_dir, local_files_only=True)
        if saved.get_vocab() != tokenizer.get_vocab():
            raise ValueError(f"{base_dir} was pre-trained for other tasks (another vocabulary); use a fresh --out")
        say(f"stage 0: using the pre-trained base in {base_dir}")

    def load():
        model = LlavaForConditionalGeneration.from_pretrained(base_dir, local_files_only=True)
        return model.to(pick_device(cfg.device)), tokenizer

    return load


ROUTED = ("hide", "disco", "modalprompt")  # strategies that route inputs with the task router (its CLIP: demo/clip.py)


def run_config(cfg: DemoConfig, method: str) -> RunConfig:
    """The run config of one compared run: a baseline selection, or Adapt-∞ with a strategy."""
    baseline = method in BASELINES
    strategy = method if method in STRATEGIES else "sequential"
    method = "adaptinf" if method in STRATEGIES else method
    doc = {"seed": cfg.seed, "strategy": strategy, "features": {"layers": "all", "out_dim": cfg.out_dim, "batch_size": 32},
           "selection": {"method": method, "k": cfg.k, "budget": cfg.budget, "rules": cfg.rules,
                         "pool_budget": None if baseline else cfg.pool_budget},
           "lora": {"r": 8, "alpha": 16, "dropout": 0.05},
           "train": {"lr": cfg.lr, "epochs": cfg.epochs, "batch_size": 16, "warmup_ratio": 0.05, "seed": cfg.seed},
           "eval": {"scorer": "exact_match", "max_new_tokens": 4}}
    if strategy in ROUTED:
        doc["router"] = {"clip": str(cfg.out / "clip")}
    for section, values in cfg.extra.items():
        doc[section] = {**doc.get(section, {}), **values}
    return RunConfig.model_validate(doc)


def run_demo(cfg: DemoConfig, say: Callable[[str], None] = print) -> dict:
    """The demo (see the module docstring); with ``seeds`` > 1, one independent demo per seed in
    ``out/seed-S`` (each resumable on its own) and their comparison as mean ± std."""
    if cfg.seeds > 1:
        return run_seeds(cfg, say)
    return run_one(cfg, say)


def run_seeds(cfg: DemoConfig, say: Callable[[str], None] = print) -> dict:
    t_start = time.perf_counter()
    per_seed = {}
    for seed in range(cfg.seed, cfg.seed + cfg.seeds):
        say(f"\n######## seed {seed} ({seed - cfg.seed + 1} of {cfg.seeds}): {cfg.out / f'seed-{seed}'}")
        one = cfg.model_copy(update={"seed": seed, "seeds": 1, "out": cfg.out / f"seed-{seed}"})
        per_seed[seed] = run_one(one, say)
    summary = over_seeds(per_seed, cfg)
    summary["seconds"] = round(time.perf_counter() - t_start, 1)
    write_json(cfg.out / "summary.json", summary)
    say(format_over_seeds(summary))
    say(f"\nwrote {cfg.out / 'summary.json'} and one folder per seed under {cfg.out} (total {summary['seconds']:.0f} s)")
    return summary


def run_one(cfg: DemoConfig, say: Callable[[str], None] = print) -> dict:
    t_start = time.perf_counter()
    cfg.out.mkdir(parents=True, exist_ok=True)
    data = make_tasks(cfg.out / "tasks", n_train=cfg.n_train, n_test=cfg.n_test, seed=cfg.seed,
                      extra=tuple(t for t in cfg.tasks if t in EXTRA_TASKS))
    tokenizer = word_tokenizer(vocabulary(data))
    say(f"tasks: {', '.join(cfg.tasks)} ({cfg.n_train} train / {cfg.n_test} test each), written to {cfg.out / 'tasks'}")
    load = pretrained_base(cfg, data["describe"]["train"], tokenizer, say)
    if any(m in ROUTED for m in cfg.compare):
        captions = [{**r, "image": str(cfg.out / "tasks" / r["image"])} for r in data["describe"]["train"]]
        pretrained_clip(cfg.out, captions, vocabulary(data), seed=cfg.seed, say=say)
    tasks = [Task(name, data[name]["train"], data[name]["test"], images=str(cfg.out / "tasks"),
                  metric=TASK_METRICS.get(name)) for name in cfg.tasks]
    results = {}
    for method in ("adaptinf", *(m for m in cfg.compare if m != "sequential")):
        kind = "strategy" if method in STRATEGIES else "baseline"
        folder = cfg.out / ("adaptinf" if method == "adaptinf" else f"{kind}-{method.replace(':', '-')}")
        say(f"\n== {method}: {folder}")
        t0 = time.perf_counter()
        results[method] = LifelongRun(folder, tasks, run_config(cfg, method), load, progress=cfg.progress, say=say,
                                      model_info={"base": str((cfg.out / "base").resolve())}).run()
        results[method]["seconds"] = round(time.perf_counter() - t0, 1)
        say(format_matrix(results[method]))
        say(replay_report(folder / "pool"))
    summary = compare(results, cfg)
    summary["seconds"] = round(time.perf_counter() - t_start, 1)
    write_json(cfg.out / "summary.json", summary)
    say(format_comparison(summary))
    say(f"\nwrote {cfg.out / 'summary.json'}, accuracy heatmaps and pool plots under {cfg.out} "
        f"(total {summary['seconds']:.0f} s)")
    return summary


def replay_report(pool: Path) -> str:
    """Per stage, what the selection took from each task (its share of the pool → of the selection),
    and what the last stage's clusters hold by task: whether old skills were replayed."""
    import json

    lines = []
    stages = sorted(pool.glob("stages/stage-*"))
    for d in stages:
        rec = json.loads((d / "record.json").read_text()) if (d / "record.json").exists() else {}
        if rec.get("select", {}).get("by_source"):
            lines.append(f"stage {int(d.name[6:])}" + format_shares(rec["select"]["by_source"], "selected")[1:])
    last = next((d / "cluster.json" for d in reversed(stages) if (d / "cluster.json").exists()), None)
    if last is not None:
        lines.append(f"what the clusters of stage {int(last.parent.name[6:])} hold, by task:")
        lines += format_composition(json.loads(last.read_text()))
    return "\n".join(lines)


def compare(results: dict[str, dict], cfg: DemoConfig) -> dict:
    runs = {}
    for method, res in results.items():
        a = np.array(res["accuracy"])
        row = {"trained_samples": res["trained_samples"], "final_pool": res["final_pool"], **res["metrics"],
               "seconds": res["seconds"], "accuracy": res["accuracy"]}
        # against every other run whose final scores are not all 0 (a gain over nothing is undefined)
        row["relative_gain"] = {b: relative_gain(a, np.array(results[b]["accuracy"])) for b in results
                                if b != method and np.any(np.array(results[b]["accuracy"])[-1] > 0)}
        runs[method] = row
    first = next(iter(results.values()))
    return {"config": cfg.model_dump(mode="json"),
            "tasks": first["tasks"], "chance": first["chance"], "runs": runs}


def format_comparison(summary: dict) -> str:
    keys = ("MFT", "MFN", "MAA", "BWT", "forgetting", "FWT")
    runs = summary["runs"]
    lines = ["\nrun (selection, strategy)   trained on  final pool " + "".join(f"{k:>11}" for k in keys) + "   seconds"]
    for method, r in runs.items():
        label = {"adaptinf": "adaptinf, sequential"}.get(method, f"adaptinf, {method}" if method in STRATEGIES
                                                         else f"{method}, sequential")
        lines.append(f"{label:<27} {r['trained_samples']:>10} {r['final_pool']:>11} "
                     + "".join(f"{r[k]:>11.3f}" if k in r else f"{'-':>11}" for k in keys) + f"{r['seconds']:>10.1f}")
    gains = [f"{m} vs {b}: {g:.1f}" for m, r in runs.items() for b, g in r["relative_gain"].items() if m == "adaptinf"]
    if gains:
        lines.append("relative gain (100 = the baseline's final scores): " + ", ".join(gains))
    return "\n".join(lines)


METRIC_KEYS = ("MFT", "MFN", "MAA", "BWT", "forgetting", "FWT")


def mean_std(values: list[float]) -> dict:
    """{"mean", "std" (sample, ddof 1; 0 for one value), "values"} of finite values (NaN kept out)."""
    v = np.array([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    return {"mean": float(v.mean()) if v.size else float("nan"), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
            "values": [None if x is None or not np.isfinite(x) else float(x) for x in values]}


def interval95(values: list[float]) -> tuple[float, float]:
    """Student's t 95% interval of the mean."""
    from scipy import stats

    v = np.array([x for x in values if np.isfinite(x)], dtype=np.float64)
    if v.size < 2:
        return float("nan"), float("nan")
    half = float(stats.t.ppf(0.975, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size))
    return float(v.mean() - half), float(v.mean() + half)


def over_seeds(per_seed: dict[int, dict], cfg: DemoConfig) -> dict:
    """Every run's metrics as mean ± std over the seeds (each seed's value kept), Adapt-∞'s relative
    gains against the baselines with their 95% intervals and whether those exclude 100."""
    seeds = list(per_seed)
    methods = list(per_seed[seeds[0]]["runs"])
    runs = {}
    for m in methods:
        rows = [per_seed[s]["runs"][m] for s in seeds]
        runs[m] = {k: mean_std([r.get(k) for r in rows]) for k in METRIC_KEYS + ("trained_samples", "final_pool", "seconds")}
        gains = {}
        for b in methods:
            if b == m:
                continue
            values = [r["relative_gain"].get(b, float("nan")) for r in rows]
            lo, hi = interval95(values)
            gains[b] = {**mean_std(values), "interval95": [lo, hi], "seeds_used": int(np.isfinite(values).sum()),
                        "excludes_100": bool(np.isfinite(lo) and (lo > 100 or hi < 100))}
        runs[m]["relative_gain"] = gains
    return {"config": cfg.model_dump(mode="json"), "seeds": seeds, "tasks": per_seed[seeds[0]]["tasks"],
            "runs": runs, "per_seed": {str(s): per_seed[s]["runs"] for s in seeds}}


def format_over_seeds(summary: dict) -> str:
    n = len(summary["seeds"])
    lines = [f"\nover {n} seeds ({', '.join(map(str, summary['seeds']))}): mean ± std",
             "run (selection, strategy)   trained on " + "".join(f"{k:>16}" for k in METRIC_KEYS)]
    for method, r in summary["runs"].items():
        label = {"adaptinf": "adaptinf, sequential"}.get(method, f"adaptinf, {method}" if method in STRATEGIES
                                                         else f"{method}, sequential")
        lines.append(f"{label:<27} {r['trained_samples']['mean']:>10.0f} "
                     + "".join(f"{r[k]['mean']:>9.3f} ± {r[k]['std']:<5.3f}" for k in METRIC_KEYS))
    gains = summary["runs"].get("adaptinf", {}).get("relative_gain", {})
    for b, g in gains.items():
        lo, hi = g["interval95"]
        verdict = ("the interval excludes 100" if g["excludes_100"] else "the interval includes 100: no difference shown")
        used = "" if g["seeds_used"] == n else f"; over the {g['seeds_used']} seeds where {b} scored above 0"
        lines.append(f"relative gain adaptinf vs {b}: {g['mean']:.1f} ± {g['std']:.1f} (95% interval {lo:.1f} .. {hi:.1f}; "
                     f"{verdict}{used})")
    return "\n".join(lines)
