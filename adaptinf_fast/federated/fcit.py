"""FCIT on our lifelong loop: the server's rounds (sampling, aggregation, evaluation after each
stage, a crash-safe state) and the client's fit (its persisted pool, Adapt-∞ selection, its LoRA
subspace trained), independent of the engine that carries the messages (``apps.py``: Flower; or
``LocalClients``, in process).

Run folder::

    run.json                      config, model, stages, tests (what every client reads)
    data/<task>-test.jsonl        test records (absolute image paths)
    clients/c007/data/stage-2.jsonl   client 7's shard of stage 2 (its data: FCIT's Dirichlet split)
    clients/c007/pool/            client 7's Adapt-∞ pool (``federated.select``), stages numbered by its visits
    server/state.pt               global weights (LoRA, projector), DISCO's prototypes, the next (stage, round), the history
    server/eval-002.json          the global model's scores after stage 2 (000: before any)
    summary.json, accuracy.json   the accuracy matrix (stages × stages) and its metrics
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .._io import atomic_write, read_jsonl, write_json, write_jsonl
from ..data.encoder import Encoder, encode_many
from ..lifelong.config import RouterSettings
from ..lifelong.evaluate import evaluate_tasks
from ..lifelong.experts import ExpertLoRA, OneHot, Soft
from ..lifelong.metrics import cl_metrics, save_matrix
from ..lifelong.models import LLM_MLP, base_loader
from ..lifelong.pool import PoolStore
from ..lifelong.run import Task, _records, chance_level
from ..lifelong.steps import POOL_STEPS, Context, StageDir, run_steps
from ..lifelong.train import train_lora
from .aggregate import Prototypes, disco_aggregate, slot_state, weighted_mean
from .config import FederatedRunConfig
from .split import dirichlet_split, sample_clients, shard_stage, stage_tasks

log = logging.getLogger(__name__)
Reply = tuple[dict, dict]  # (meta: JSON-able, arrays: {name: tensor})


def client_dir(out: Path, client: int) -> Path:
    return Path(out) / "clients" / f"c{client:03d}"


class FederatedModel:
    """The base model with the run's LoRA (rank E·r; DISCO reads it as E subspaces), its encoder
    and, for DISCO, the text router. One per process (clients of a simulation share it)."""

    def __init__(self, cfg: FederatedRunConfig, model: dict):
        from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

        self.cfg, fed = cfg, cfg.federated
        self.disco = fed.aggregation == "disco"
        base, self.tokenizer, processor = base_loader(model)()
        for p in base.parameters():
            p.requires_grad_(False)
        torch.manual_seed(cfg.seed)  # the initial adapter is a function of the seed
        lora = cfg.lora.peft_config(base, experts=fed.experts, projections=LLM_MLP if cfg.disco.targets == "mlp" else None)
        self.model = get_peft_model(base, lora)
        self.layer = ExpertLoRA(self.model, fed.experts)
        if self.disco:
            self.layer.init_experts(cfg.seed, cfg.disco.init_std)
        self.rank = self.layer.rank
        # FCIT trains the multimodal projector too (averaged by FedAvg): "shared" weights besides the LoRA
        self.shared = {n: p for n, p in self.model.named_parameters()
                       if fed.train_projector and "multi_modal_projector" in n}
        for p in self.shared.values():
            p.requires_grad_(True)
        self.encoder = Encoder.for_model(self.model, self.tokenizer, max_length=cfg.features.max_length,
                                         image_processor=processor)
        self._get, self._set = get_peft_model_state_dict, set_peft_model_state_dict
        self._router = None

    def state(self) -> dict[str, torch.Tensor]:
        """The LoRA state (PEFT's keys) and the shared weights (their parameter names), CPU copies."""
        out = {k: v.detach().cpu().clone() for k, v in self._get(self.model).items()}
        return {**out, **{n: p.detach().cpu().clone() for n, p in self.shared.items()}}

    def load(self, state: dict[str, torch.Tensor]) -> None:
        lora = {k: v for k, v in state.items() if ".lora_" in k}
        missing = [k for k in getattr(self._set(self.model, lora), "missing_keys", []) if "lora_" in k]
        missing += [n for n in self.shared if n not in state]
        if missing or not lora:
            raise RuntimeError(f"the global state does not match the model: {len(missing)} weights missing "
                               f"(first: {missing[:1]})")
        with torch.no_grad():
            for n, p in self.shared.items():
                p.copy_(state[n])

    @property
    def router(self):
        if self._router is None:
            from ..lifelong.routing import build_router

            settings = RouterSettings(clip=self.cfg.router.clip, temperature=self.cfg.disco.temperature, modalities=["text"])
            self._router = build_router(settings, model=self.model, encoder=self.encoder)
        return self._router

    def text_features(self, records: Sequence[dict]) -> torch.Tensor:
        """(N, D) float32 on the CPU: the router's text features (DISCO's client features)."""
        return self.router.features(list(records))["text"].cpu()


_MODELS: dict[str, FederatedModel] = {}


def model_for(out: Path) -> tuple[FederatedModel, dict]:
    """The process's model for run folder ``out`` (loaded once per run.json) and the run's run.json."""
    text = (Path(out) / "run.json").read_text()
    doc = json.loads(text)
    key = f"{Path(out).resolve()}:{hash(text)}"
    if key not in _MODELS:
        _MODELS[key] = FederatedModel(FederatedRunConfig.model_validate(doc["config"]), doc["model"])
    return _MODELS[key], doc


def fit(job: dict, arrays: dict[str, torch.Tensor], progress: bool = False) -> Reply:
    """One client's round: ``job`` = {out, client, stage, round}; ``arrays``: the global LoRA state
    (and DISCO's ``proto_sums`` / ``proto_counts``). Returns its reply: meta {client, n, slot,
    feature_count, loss, ...} and arrays (FedAvg: its whole LoRA; DISCO: its trained subspace and
    ``feature_sum``). Deterministic in (run seed, stage, round, client) and the global state."""
    out, c, s, r = Path(job["out"]), int(job["client"]), int(job["stage"]), int(job["round"])
    m, doc = model_for(out)
    cfg, fed = m.cfg, m.cfg.federated
    m.load(arrays)
    shard = read_jsonl(client_dir(out, c) / "data" / f"stage-{s}.jsonl")
    meta: dict = {"client": c, "stage": s, "round": r, "shard": len(shard)}
    slot, feats = 0, None
    if m.disco:
        feats = m.text_features(shard)  # the client's task feature: the mean over its stage's records
        slot = Prototypes.from_state(arrays).choose(feats.mean(0), fed.threshold) if "proto_sums" in arrays else 0
    mode = m.layer.mode(OneHot(slot)) if m.disco else nullcontext()
    with mode:
        records = _selected(m, doc, out, c, s, shard, meta) if fed.select else shard
        skipped: list = []
        _, items = encode_many([(x["id"], x) for x in records], m.encoder, lambda i, why: skipped.append((i, why)))
        if not items:
            raise ValueError(f"client {c}, stage {s}: none of its {len(records)} records could be encoded")
        tc = cfg.train.model_copy(update={"epochs": fed.local_epochs, "pad_token_id": m.encoder.pad_token_id,
                                          "seed": _seed(cfg.train.seed, s, r, c)})
        res = train_lora(m.model, items, tc, progress=progress, collate_fn=m.encoder.collate)
    state = m.state()
    meta.update(n=len(items), slot=slot, loss=round(res["losses"][-1], 4) if res["losses"] else None,
                skipped=len(skipped))
    if not m.disco:
        return meta, state
    meta["feature_count"] = len(feats)
    shared = {n: state[n] for n in m.shared}
    return meta, {**slot_state(state, slot, m.rank), **shared, "feature_sum": feats.double().sum(0)}


def _selected(m: FederatedModel, doc: dict, out: Path, c: int, s: int, shard: list, meta: dict) -> list[dict]:
    """Adapt-∞ on the client: its shard of stage ``s`` added to its own pool (at the client's next
    pool stage), gradient features of the current global model (its subspace active), clusters,
    selection over the whole pool (earlier stages' kept records too), then permanent pruning. Done
    once per stage (later rounds of the stage reuse the selection); resumable step by step."""
    cdir = client_dir(out, c)
    chosen = cdir / f"selected-{s}.jsonl"
    stages_file = cdir / "stages.json"
    stages = json.loads(stages_file.read_text()) if stages_file.exists() else {}
    pool = PoolStore(cdir / "pool", create=True)
    if str(s) not in stages:  # the pool stage of this stage, fixed before any step runs
        stages[str(s)] = pool.state.stage + 1 if pool.state.stage == 0 or pool.state.finished(pool.state.stage, "prune") \
            else pool.state.stage
        write_json(stages_file, stages)
    p = stages[str(s)]
    cfg = m.cfg
    # what the pool has never held (a heterogeneous client trains an earlier shard again: already added;
    # ids are unique across the run's tasks, checked when the run is prepared)
    fresh = cdir / "data" / f"new-{s}.jsonl"
    if not pool.state.finished(p, "add"):
        known = {row["id"] for row in pool.rows}
        write_jsonl(fresh, [x for x in shard if x["id"] not in known])
    sc = cfg.stage_config(p, doc["stages"][s - 1]["name"], str(fresh))
    if not chosen.exists():
        run_steps(sc, Context(pool, progress=False), ("add",), POOL_STEPS)
        k = cfg.selection.k  # no more clusters than the pool holds after the add (the same on a resume)
        if isinstance(k, int):
            sc = cfg.stage_config(p, doc["stages"][s - 1]["name"], str(fresh), {"k": max(1, min(k, len(pool.ids())))})
        from ..features import GradientFeaturizer

        def featurize(sd: StageDir, records: list):
            fz = GradientFeaturizer(m.model, layers=sc.layers, out_dim=sc.out_dim, seed=cfg.seed, scores=sc.scores,
                                    tokenizer=m.tokenizer, rules=sc.rules, encoder=m.encoder)
            return fz.extract(records, batch_size=sc.batch_size, out_dir=sd.shards, progress=False,
                              disk_dtype=sc.dtype, lazy=True)

        ctx = Context(pool, progress=False, featurize=featurize)
        run_steps(sc, ctx, POOL_STEPS[:-1], POOL_STEPS)
        records = pool.records(StageDir(pool, p).selection())
        atomic_write(chosen, lambda f: f.write("".join(json.dumps(x) + "\n" for x in records).encode()))
    run_steps(sc, Context(pool, progress=False), ("prune",), POOL_STEPS)  # a no-op once done
    records = read_jsonl(chosen)
    meta.update(pool_stage=p, selected=len(records), pool_after=len(pool.ids()))
    return records


def _seed(*parts: int) -> int:
    """A 31-bit seed from a tuple (no collisions between (stage, round, client) triples)."""
    return int(np.random.SeedSequence([int(x) for x in parts]).generate_state(1)[0] >> 1)


class LocalClients:
    """The engine-free dispatch: every job's fit in this process, one after the other."""

    def __call__(self, jobs: Sequence[dict], arrays: dict[str, torch.Tensor]) -> list[Reply]:
        return [fit(job, arrays) for job in jobs]


class FederatedRun:
    """The server of a federated continual run over ``tasks`` (FCIT): prepare the clients' shards,
    then per stage ``rounds_per_task`` rounds (sample, dispatch, aggregate, save), then evaluate
    the global model on every task. ``model``: ModelSettings as a dict (at least ``base``: a model
    folder every client can read). Resumable: the state is saved after every round."""

    def __init__(self, out: str | Path, tasks: Sequence[Task], cfg: FederatedRunConfig, model: dict,
                 say: Callable[[str], None] = print, progress: bool = False):
        names = [t.name for t in tasks]
        if not tasks or len(set(names)) != len(names):
            raise ValueError(f"a federated run needs tasks with unique names; got {names}")
        self.out, self.tasks, self.cfg, self.model, self.say, self.progress = Path(out), list(tasks), cfg, model, say, progress
        self.stages = stage_tasks(names, cfg.federated.scenario, cfg.federated.groups)
        self.state_file = self.out / "server" / "state.pt"

    # -- preparation -------------------------------------------------------------------------------
    def prepare(self) -> dict[str, list[dict]]:
        """run.json, the test files and every client's shards (written once; a resumed run keeps them)."""
        fed, by_name = self.cfg.federated, {t.name: t for t in self.tasks}
        tests = {t.name: _records(t.test, t.images, f"task {t.name!r} test")[: self.cfg.eval.limit] for t in self.tasks}
        if (self.out / "run.json").exists():
            saved = json.loads((self.out / "run.json").read_text())
            if saved["config"] != json.loads(self.cfg.model_dump_json()) or saved["model"] != self.model:
                raise ValueError(f"{self.out} holds a run with another config or model (run.json); resume it with the "
                                 "same settings, or use a fresh folder")
            return tests
        ids = [r["id"] for t in self.tasks for r in _records(t.train, t.images, f"task {t.name!r} train")]
        if len(set(ids)) != len(ids):
            raise ValueError(f"{len(ids) - len(set(ids))} training record id(s) repeat across the tasks: a client's "
                             "pool keys records by id; give every record a unique id (e.g. prefix the task name)")
        doc = {"config": json.loads(self.cfg.model_dump_json()), "model": self.model,
               "stages": [{"name": "+".join(g), "tasks": g} for g in self.stages],
               "tasks": [{"name": t.name, "metric": t.metric} for t in self.tasks]}
        splits = []
        for s, group in enumerate(self.stages, 1):
            recs = [r for name in group for r in _records(by_name[name].train, by_name[name].images, f"task {name!r} train")]
            if len(group) > 1:  # grouped datasets: one shuffled stage
                recs = [recs[i] for i in np.random.default_rng([self.cfg.seed, s]).permutation(len(recs))]
            splits.append([[recs[i] for i in part] for part in
                           dirichlet_split(len(recs), fed.clients, fed.beta, fed.min_size, seed=self.cfg.seed + s)])
        for c in range(fed.clients):
            for s in range(1, len(self.stages) + 1):
                write_jsonl(client_dir(self.out, c) / "data" / f"stage-{s}.jsonl",
                            splits[shard_stage(s - 1, c, fed.heterogeneous)][c])
        for name, recs in tests.items():
            write_jsonl(self.out / "data" / f"{name}-test.jsonl", recs)
        write_json(self.out / "run.json", doc)  # last: its presence marks the preparation complete
        return tests

    # -- state ---------------------------------------------------------------------------------------
    def _load_state(self, m: FederatedModel) -> dict:
        if self.state_file.exists():
            return torch.load(self.state_file, weights_only=False)
        state = {"weights": m.state(), "next": [1, 0], "history": []}  # DISCO's prototypes come with the first replies
        self._save_state(state)  # before any client trains: a retry starts from it, not from a process's model
        return state

    def _save_state(self, state: dict) -> None:
        atomic_write(self.state_file, lambda f: torch.save(state, f))

    # -- the loop --------------------------------------------------------------------------------------
    def run(self, dispatch: Callable[[Sequence[dict], dict], list[Reply]] | None = None,
            stop_after: tuple[int, int] | None = None) -> dict:
        """Run or resume every stage; ``dispatch(jobs, arrays)`` carries the round to the clients
        (default ``LocalClients``). ``stop_after`` (tests): return after that (stage, round) is saved,
        as a kill would."""
        dispatch = dispatch or LocalClients()
        self.out.mkdir(parents=True, exist_ok=True)
        tests = self.prepare()
        m, _ = model_for(self.out)
        fed = self.cfg.federated
        state = self._load_state(m)
        self._evaluate(m, state, 0, tests)
        for s in range(1, len(self.stages) + 1):
            for r in range(fed.rounds_per_task):
                if [s, r] < state["next"]:
                    continue
                t0 = time.perf_counter()
                clients = sample_clients(s, r, fed.clients, fed.per_round, self.cfg.seed)
                jobs = [{"kind": "fcit", "out": str(self.out.resolve()), "client": c, "stage": s, "round": r} for c in clients]
                arrays = {**state["weights"], **state.get("protos", {})}
                replies = sorted(dispatch(jobs, arrays), key=lambda rep: rep[0]["client"])
                if [rep[0]["client"] for rep in replies] != clients:
                    raise RuntimeError(f"stage {s} round {r}: replies from {[x[0]['client'] for x in replies]}, "
                                       f"expected {clients}")
                info = self._aggregate(m, state, replies)
                state["next"] = [s, r + 1] if r + 1 < fed.rounds_per_task else [s + 1, 0]
                state["history"].append({"stage": s, "round": r, "clients": clients, **info,
                                         "seconds": round(time.perf_counter() - t0, 2)})
                self._save_state(state)
                self.say(f"stage {s} round {r}: clients {clients}, " + ", ".join(
                    f"{k} {v}" for k, v in info.items() if k in ("slots", "groups", "loss")))
                if stop_after == (s, r):
                    return {}
            self._evaluate(m, state, s, tests)
        return self._finish(tests)

    def _aggregate(self, m: FederatedModel, state: dict, replies: list[Reply]) -> dict:
        metas = [meta for meta, _ in replies]
        info = {"n": [x["n"] for x in metas], "loss": round(float(np.mean([x["loss"] for x in metas if x["loss"] is not None]
                                                                              or [float("nan")])), 4)}
        if m.disco:
            protos = Prototypes.from_state(state["protos"]) if "protos" in state else \
                Prototypes(self.cfg.federated.experts, replies[0][1]["feature_sum"].shape[0])
            parts = [{"state": {k: v for k, v in a.items() if ".lora_" in k}, "n": x["n"],
                      "feature_sum": a["feature_sum"], "feature_count": x["feature_count"]} for x, a in replies]
            state["weights"], groups = disco_aggregate(state["weights"], parts, protos, m.rank, self.cfg.federated.threshold)
            if m.shared:  # the projector: FedAvg over every client of the round
                state["weights"].update(weighted_mean([{n: a[n] for n in m.shared} for _, a in replies], info["n"]))
            state["protos"] = protos.state()
            info.update(slots=[x["slot"] for x in metas],
                        groups=[{"clients": [metas[i]["client"] for i in g["members"]], "slot": g["slot"]} for g in groups])
        else:
            state["weights"] = weighted_mean([a for _, a in replies], info["n"])
        if any("selected" in x for x in metas):
            info["selected"] = [x.get("selected") for x in metas]
        return info

    def _route(self, m: FederatedModel, state: dict):
        """DISCO's inference: every LoRA layer mixes the learned subspaces, w = softmax(cos(text,
        prototype_i) / temperature) over the used slots, per record."""
        if not m.disco or "protos" not in state:
            return None
        protos = Prototypes.from_state(state["protos"])
        used = protos.used
        if not used:
            m.layer.set(OneHot(0))
            return None
        router, means = m.router, protos.means()
        router.load_state_dict({"modalities": ["text"], "sums": [{"text": means[i]} for i in used], "counts": [1] * len(used)})

        def route(records) -> None:
            w = torch.zeros(len(records), self.cfg.federated.experts)
            w[:, used] = router.weights(list(records)).cpu()
            m.layer.set(Soft(w))

        return route

    def _evaluate(self, m: FederatedModel, state: dict, s: int, tests: dict) -> None:
        path = self.out / "server" / f"eval-{s:03d}.json"
        if path.exists():
            return
        m.load(state["weights"])
        route = self._route(m, state)
        try:
            doc = evaluate_tasks(m.model, m.encoder, tests, self.cfg.eval, before_batch=route, progress=self.progress,
                                 metrics={t.name: t.metric for t in self.tasks if t.metric})
        finally:
            m.layer.set(None)
        write_json(path, {"stage": s, **doc})

    def _finish(self, tests: dict) -> dict:
        names = [t.name for t in self.tasks]
        metric = {t.name: t.metric or self.cfg.eval.scorer for t in self.tasks}
        cols = ["+".join(g) for g in self.stages]
        rows = [json.loads((self.out / "server" / f"eval-{s:03d}.json").read_text())["scores"] for s in range(len(cols) + 1)]
        a = np.array([[np.mean([row[n] for n in g]) for g in self.stages] for row in rows])
        save_matrix(self.out / "accuracy.json", a, cols)
        state = torch.load(self.state_file, weights_only=False)
        fed = self.cfg.federated
        summary = {"aggregation": fed.aggregation, "select": fed.select, "tasks": cols, "task_names": names,
                   "accuracy": a.tolist(), "metrics": cl_metrics(a),
                   "per_task": [{n: row[n] for n in names} for row in rows],
                   "chance": {col: float(np.mean([chance_level(tests[n], metric[n]) for n in g]))
                              for col, g in zip(cols, self.stages)},
                   "rounds": state["history"]}
        write_json(self.out / "summary.json", summary)
        return summary


__all__ = ["FederatedModel", "FederatedRun", "LocalClients", "client_dir", "fit", "model_for"]
