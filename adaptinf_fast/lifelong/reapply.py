"""``adaptinf-fast merge RUN --method M``: re-apply a training-free merge to a finished run.

Every stage of a run keeps its own adapter (``stage-NNN/adapter``), so a merge strategy can be
evaluated afterwards without training: for each stage t the task adapters 1..t are merged
(``ops.merge``), the merged model is evaluated on every task's saved test records
(``data/<task>-test.jsonl``), and the accuracy matrix and metrics are written to
``RUN/merge-<method>/`` (stage 0, the initial adapter, is the run's own row). The adapters need
not come from a merging run: on a sequential run this averages its successive adapters.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np

from .._io import read_jsonl, write_json
from . import strategies
from .strategies.merge import merge_adapters
from .config import RunConfig
from .evaluate import evaluate_tasks
from .metrics import save_matrix
from .pool import PoolStore
from .steps import StageDir


def reapply_merge(run_dir: str | Path, method: str, load_base: Callable[[], tuple] | None = None, *,
                  density: float = 0.2, lam: float | None = None, keep: float = 0.2, clamp: float = 0.2,
                  out: str | Path | None = None, progress: bool = True, say: Callable[[str], None] = print) -> dict:
    """Merge every prefix of the run's task adapters with ``method`` and evaluate it; returns (and
    writes as ``summary.json``) the accuracy matrix and metrics. ``load_base``: default, the model
    recorded in the run's ``run.json``."""
    from peft import get_peft_model
    from peft.utils import load_peft_weights, set_peft_model_state_dict

    from ..data.encoder import Encoder
    from .models import base_loader

    run_dir = Path(run_dir)
    strategy = strategies.check(f"merge:{method}")
    doc = json.loads((run_dir / "run.json").read_text())
    cfg = RunConfig.model_validate({**doc["config"], "strategy": strategy,
                                    "merge": {"density": density, "lam": lam, "keep": keep, "clamp": clamp}})
    names = [t["name"] for t in doc["tasks"]]
    task_metrics = {t["name"]: t.get("metric") or cfg.eval.scorer for t in doc["tasks"]}
    missing = [n for n in names if not (run_dir / "data" / f"{n}-test.jsonl").exists()]
    if missing:
        raise FileNotFoundError(f"{run_dir} has no saved test records for {missing} (runs before this version)")
    pool = PoolStore(run_dir / "pool")
    done = [t for t in range(len(names) + 1) if StageDir(pool, t).adapter.exists()]
    if done != list(range(len(names) + 1)):
        raise ValueError(f"{run_dir} is not finished: adapters exist for stages {done}")
    if load_base is None:
        if "model" not in doc:
            raise ValueError(f"{run_dir}/run.json does not record its model; pass the base model folder")
        load_base = base_loader(doc["model"])
    loaded = load_base()
    base, tokenizer = loaded[0], loaded[1]
    model = get_peft_model(base, cfg.lora.peft_config(base))
    encoder = Encoder.for_model(model, tokenizer, max_length=cfg.features.max_length,
                                image_processor=loaded[2] if len(loaded) > 2 else None)
    tests = {n: read_jsonl(run_dir / "data" / f"{n}-test.jsonl") for n in names}
    scale = cfg.lora.alpha / cfg.lora.r
    first = json.loads(StageDir(pool, 0).eval_json.read_text())
    rows = [[first["scores"][n] for n in names]]
    adapters = []
    for t in range(1, len(names) + 1):
        adapters.append(load_peft_weights(str(StageDir(pool, t).adapter)))
        set_peft_model_state_dict(model, merge_adapters(adapters, method, cfg.merge, scale, next(model.parameters()).device))
        scores = evaluate_tasks(model, encoder, tests, cfg.eval, progress=progress, desc=f"stage {t}: ",
                                metrics=task_metrics)["scores"]
        row = [scores[n] for n in names]
        rows.append(row)
        say(f"stage {t}: merged {t} adapter(s) ({method}): " + ", ".join(f"{n} {v:.3f}" for n, v in zip(names, row)))
    target = Path(out) if out else run_dir / f"merge-{method}"
    target.mkdir(parents=True, exist_ok=True)
    a = np.array(rows, dtype=np.float64)
    matrix = save_matrix(target / "accuracy.json", a, names)
    from .run import chance_level

    summary = {"strategy": strategy, "source": str(run_dir), "tasks": names, "accuracy": a.tolist(),
               "metrics": matrix["metrics"], "chance": {n: chance_level(tests[n], task_metrics[n]) for n in names},
               "merge": cfg.merge.model_dump()}
    write_json(target / "summary.json", summary)
    return summary
