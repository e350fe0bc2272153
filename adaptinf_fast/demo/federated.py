"""``adaptinf-fast demo-federated``: a scaled-down FCIT on the built-in tasks under Flower's
simulation engine, offline, on a few CPU cores.

The demo's tiny LLaVA is pre-trained on captions (stage 0, as in ``demo``) and its tiny CLIP gives
DISCO's text features; then each task is one stage of a federated run (``federated/fcit.py``):
its training records split over ``clients`` by Dirichlet(β), ``per_round`` clients per round,
``rounds`` rounds per stage, ``local_epochs`` on each client. Compared on the same data and base:
``fedavg`` (one LoRA, FedAvg), ``disco`` (DISCO's subspaces, grouping and routing) and
``disco+adaptinf`` (DISCO with Adapt-∞ selection and pruning on every client's own pool). Then
PILoRA (``federated/pilora.py``) on the digits as a class-incremental stream.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Literal

from pydantic import Field, model_validator

from .._io import write_json
from ..data.demo_tasks import TASKS, make_tasks, vocabulary, word_tokenizer
from ..lifelong.config import Strict
from ..lifelong.run import Task, format_matrix
from .clip import pretrained_clip
from .lifelong import DemoConfig, pretrained_base

STRATEGIES = ("fedavg", "disco", "disco+adaptinf")


class FederatedDemoConfig(Strict):
    out: Path = Path("adaptinf-demo-federated")
    tasks: tuple[str, ...] = TASKS
    n_train: int = Field(60, ge=1)
    n_test: int = Field(20, ge=1)
    clients: int = Field(10, ge=1)
    per_round: int = Field(3, ge=1)
    rounds: int = Field(2, ge=1)
    local_epochs: int = Field(10, ge=1)
    beta: float = Field(1.0, gt=0)
    budget: int = Field(12, ge=1)  # per client and stage (disco+adaptinf)
    pool_budget: int = Field(24, ge=1)  # per client (disco+adaptinf)
    k: int = Field(4, ge=1)
    lr: float = Field(3e-3, gt=0)
    pretrain_epochs: int = Field(40, ge=1)
    compare: tuple[str, ...] = STRATEGIES
    pilora: bool = True
    pilora_rounds: int = Field(2, ge=1)
    engine: Literal["flower", "local"] = "flower"  # local: the same rounds in this process, without Flower
    seed: int = 0
    progress: bool = True

    @model_validator(mode="after")
    def _check(self):
        bad = set(self.compare) - set(STRATEGIES)
        if bad:
            raise ValueError(f"compare takes {', '.join(STRATEGIES)}; got {sorted(bad)}")
        if set(self.tasks) - set(TASKS) or not self.tasks:
            raise ValueError(f"tasks must be a non-empty subset of {TASKS}; got {list(self.tasks)}")
        if self.per_round > self.clients:
            raise ValueError(f"per_round ({self.per_round}) exceeds clients ({self.clients})")
        return self


def run_config(cfg: FederatedDemoConfig, strategy: str, clip: Path):
    from ..federated.config import FederatedRunConfig

    return FederatedRunConfig.model_validate({
        "seed": cfg.seed, "lora": {"r": 4, "alpha": 8, "dropout": 0.05},
        "train": {"lr": cfg.lr, "batch_size": 8, "warmup_ratio": 0.05, "seed": cfg.seed},
        "eval": {"scorer": "exact_match", "max_new_tokens": 4}, "router": {"clip": str(clip)},
        "features": {"layers": "all", "out_dim": 256, "batch_size": 16},
        "selection": {"k": cfg.k, "budget": cfg.budget, "pool_budget": cfg.pool_budget},
        "federated": {"clients": cfg.clients, "per_round": cfg.per_round, "rounds_per_task": cfg.rounds,
                      "local_epochs": cfg.local_epochs, "beta": cfg.beta, "experts": len(cfg.tasks),
                      "aggregation": "fedavg" if strategy == "fedavg" else "disco",
                      "select": strategy == "disco+adaptinf"}})


def _engine(cfg: FederatedDemoConfig, make_run: Callable, clients: int) -> dict:
    if cfg.engine == "local":
        return make_run().run()
    from ..federated.apps import simulate

    simulate(make_run, clients)
    return json.loads((make_run().out / "summary.json").read_text())


def run_federated_demo(cfg: FederatedDemoConfig, say: Callable[[str], None] = print) -> dict:
    from ..federated.fcit import FederatedRun
    from ..federated.pilora import PiloraRun, PiloraSettings

    t_start = time.perf_counter()
    cfg.out.mkdir(parents=True, exist_ok=True)
    data = make_tasks(cfg.out / "tasks", n_train=cfg.n_train, n_test=cfg.n_test, seed=cfg.seed)
    words = vocabulary(data)
    base_cfg = DemoConfig(out=cfg.out, tasks=cfg.tasks, pretrain_epochs=cfg.pretrain_epochs, lr=cfg.lr, seed=cfg.seed,
                          progress=cfg.progress, device="cpu")
    pretrained_base(base_cfg, data["describe"]["train"], word_tokenizer(words), say)
    captions = [{**r, "image": str(cfg.out / "tasks" / r["image"])} for r in data["describe"]["train"]]
    clip = pretrained_clip(cfg.out, captions, words, seed=cfg.seed, say=say)
    tasks = [Task(name, data[name]["train"], data[name]["test"], images=str(cfg.out / "tasks")) for name in cfg.tasks]
    say(f"federated: {cfg.clients} clients, {cfg.per_round} per round, {cfg.rounds} rounds per stage, "
        f"{cfg.local_epochs} local epochs, Dirichlet β {cfg.beta}; engine {cfg.engine}")
    results = {}
    for strategy in cfg.compare:
        folder = cfg.out / strategy.replace("+", "-")
        say(f"\n== {strategy}: {folder}")
        t0 = time.perf_counter()
        rc = run_config(cfg, strategy, clip)
        make = lambda rc=rc, folder=folder: FederatedRun(folder, tasks, rc, {"base": str((cfg.out / "base").resolve()),
                                                                          "device": "cpu"}, say=say)
        results[strategy] = _engine(cfg, make, cfg.clients)
        results[strategy]["seconds"] = round(time.perf_counter() - t0, 1)
        say(format_matrix(results[strategy]))
    if cfg.pilora:
        say("\n== pilora: class-incremental digits (2 classes per task), tiny ViT")
        t0 = time.perf_counter()
        ps = PiloraSettings(seed=cfg.seed, clients=cfg.clients, per_round=cfg.per_round, rounds_per_task=cfg.pilora_rounds,
                            local_epochs=5, batch_size=32, lr_centres=0.05, lr_lora=1e-3)
        results["pilora"] = _engine(cfg, lambda: PiloraRun(cfg.out / "pilora", ps, say=say), cfg.clients)
        results["pilora"]["seconds"] = round(time.perf_counter() - t0, 1)
        say(format_matrix(results["pilora"]))
    summary = {"config": json.loads(cfg.model_dump_json()),
               "runs": {k: {"metrics": v["metrics"], "accuracy": v["accuracy"], "seconds": v["seconds"]}
                        for k, v in results.items()}, "seconds": round(time.perf_counter() - t_start, 1)}
    write_json(cfg.out / "summary.json", summary)
    say("\n" + format_runs(summary))
    return summary


def format_runs(summary: dict) -> str:
    lines = [f"{'run':<16}{'MFT':>7}{'MFN':>7}{'MAA':>7}{'BWT':>8}{'seconds':>9}"]
    for name, r in summary["runs"].items():
        m = r["metrics"]
        lines.append(f"{name:<16}{m['MFT']:>7.3f}{m['MFN']:>7.3f}{m['MAA']:>7.3f}{m.get('BWT', 0.0):>+8.3f}{r['seconds']:>9.1f}")
    return "\n".join(lines)


__all__ = ["FederatedDemoConfig", "format_runs", "run_federated_demo"]
