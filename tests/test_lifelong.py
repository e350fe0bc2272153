"""Pool store and stage runner: invariants, determinism, bad input, CLI, and kill-and-resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from adaptinf_fast import cli
from conftest import lock_held_elsewhere
from adaptinf_fast.lifelong import POOL_STEPS, Context, PoolStore, StageConfig, load_stage_config, run_stage, run_steps
from adaptinf_fast.lifelong.steps import StageDir

D = 24


def make_data(tmp: Path, seed: int = 0):
    """Two datasets of records and one features file covering every id (with planted duplicates)."""
    rng = np.random.default_rng(seed)
    ids, feats = [], []
    for source, n in (("taskA", 120), ("taskB", 90)):
        centers = rng.standard_normal((4, D)) * 2
        recs = []
        for i in range(n):
            rid = f"{source}-{i}"
            recs.append({"id": rid, "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]})
            v = centers[i % 4] + rng.standard_normal(D)
            if i % 10 == 9:
                v = feats[-1] + 1e-4 * rng.standard_normal(D)  # near-duplicate of the previous sample
            ids.append(rid)
            feats.append(v)
        (tmp / f"{source}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    f = np.stack(feats).astype(np.float32)
    scores = {f"score_{k}": rng.gamma(2.0, size=len(ids)).astype(np.float32) for k in ("ppl", "el2n", "entropy", "grand")}
    np.savez(tmp / "features.npz", ids=np.array(ids), features=f, **scores)
    return tmp / "features.npz"


def stage_cfgs(tmp: Path) -> list[StageConfig]:
    feats = str(tmp / "features.npz")
    common = dict(features_from=feats, k=4, budget=40, pool_budget=150, scores=["ppl", "el2n", "entropy", "grand"], seed=3)
    return [StageConfig(stage=1, data=str(tmp / "taskA.jsonl"), source="taskA", **common),
            StageConfig(stage=2, data=str(tmp / "taskB.jsonl"), source="taskB", **common)]


def snapshot(pool: Path) -> dict[str, bytes]:
    """Every file of the pool except wall-clock timings."""
    return {str(p.relative_to(pool)): p.read_bytes() for p in sorted(pool.rglob("*"))
            if p.is_file() and p.name not in ("timings.json", ".lock")}


def test_two_stages_invariants_and_determinism(tmp_path):
    make_data(tmp_path)
    for run in ("a", "b"):
        for cfg in stage_cfgs(tmp_path):
            run_stage(tmp_path / run, cfg)
    assert snapshot(tmp_path / "a") == snapshot(tmp_path / "b"), "same seed -> same pool, selection, records"
    pool = PoolStore(tmp_path / "a")
    ids = [r["id"] for r in pool.rows]
    assert len(ids) == len(set(ids)) == 210, "every id that entered is there exactly once"
    counts = pool.counts()
    assert counts["pruned"] == 210 - 150
    rec1 = json.loads((pool.stage_dir(1) / "record.json").read_text())
    rec2 = json.loads((pool.stage_dir(2) / "record.json").read_text())
    assert rec1["prune"]["pool_after"] == 120 and rec2["prune"]["pool_after"] == 150
    assert sum(rec2["select"]["budgets"].values()) == 40 and set(rec2["select"]["selectors"].values()) <= {"ppl", "el2n", "entropy", "grand"}
    pruned1 = set(json.loads((pool.stage_dir(1) / "prune.json").read_text())["ids"])
    feats2 = set(json.loads((pool.stage_dir(2) / "features.json").read_text())["ids"])
    assert not pruned1 & feats2, "pruned samples never come back"
    sel2 = json.loads((pool.stage_dir(2) / "selection.json").read_text())["ids"]
    assert len(sel2) == 40 and set(sel2) <= feats2
    pruned2 = set(json.loads((pool.stage_dir(2) / "prune.json").read_text())["ids"])
    assert counts["selected"] == len(set(sel2) - pruned2)  # selected for training, then possibly pruned


@pytest.mark.parametrize("method", ["random", "full", "semdedup", "score:ppl"])
def test_baseline_methods(method, tmp_path):
    make_data(tmp_path)
    cfg = stage_cfgs(tmp_path)[0]
    cfg.method = method
    rec = run_stage(tmp_path / "pool", cfg)
    assert rec["select"]["selected"] == (120 if method == "full" else 40)
    if method == "score:ppl":
        assert set(rec["select"]["selectors"].values()) == {"ppl"}


def test_threshold_pruning_drops_planted_duplicates(tmp_path):
    make_data(tmp_path)
    cfg = stage_cfgs(tmp_path)[0]
    cfg.prune, cfg.eps = "threshold", 0.001
    rec = run_stage(tmp_path / "pool", cfg)
    pruned = json.loads((PoolStore(tmp_path / "pool").stage_dir(1) / "prune.json").read_text())["ids"]
    assert rec["prune"]["pruned"] == 12 and all(int(i.split("-")[1]) % 10 in (8, 9) for i in pruned)


def test_bad_input(tmp_path, caplog):
    make_data(tmp_path)
    cfg = stage_cfgs(tmp_path)[0]
    dup = tmp_path / "dup.jsonl"
    dup.write_text((tmp_path / "taskA.jsonl").read_text().splitlines()[0] * 2 + "\n")
    with pytest.raises(ValueError, match="dup.jsonl:1: not valid JSON"):
        run_stage(tmp_path / "p0", StageConfig(stage=1, data=str(dup), source="x", features_from=cfg.features_from, pool_budget=9))
    dup.write_text(((tmp_path / "taskA.jsonl").read_text().splitlines()[0] + "\n") * 2)
    with pytest.raises(ValueError, match="duplicate id"):
        run_stage(tmp_path / "p1", StageConfig(stage=1, data=str(dup), source="x", features_from=cfg.features_from, pool_budget=9))
    assert PoolStore(tmp_path / "p1").rows == [], "nothing half-written"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "ok", "input_ids": [1, 2]}\n{"no_id": 1}\n{"id": "empty"}\n')
    with caplog.at_level("WARNING", logger="adaptinf_fast"):
        store = PoolStore(tmp_path / "p2", create=True)
        run_steps(StageConfig(stage=1, data=str(bad), source="x", pool_budget=1), Context(store), ("add",), POOL_STEPS)
    rec = json.loads((store.stage_dir(1) / "record.json").read_text())["add"]
    assert rec["added"] == 1 and len(rec["skipped"]) == 2 and "skipped 'empty'" in caplog.text
    few = tmp_path / "few.npz"
    np.savez(few, ids=np.array(["taskA-0"]), features=np.zeros((1, D), np.float32))
    with pytest.raises(ValueError, match="do not match the pool"):
        run_stage(tmp_path / "p3", StageConfig(stage=1, data=cfg.data, source="a", features_from=str(few), pool_budget=5))
    big_k = stage_cfgs(tmp_path)[0]
    big_k.k = 500
    with pytest.raises(ValueError, match="larger than the pool"):
        run_stage(tmp_path / "p4", big_k)
    over = stage_cfgs(tmp_path)[0]
    over.budget = 10_000
    rec = run_stage(tmp_path / "p5", over)
    assert rec["select"]["selected"] == 120 and "capped" in rec["select"]["note"]
    with pytest.raises(ValueError, match="method is 'best'(.|\n)*pool_budget"):
        StageConfig(stage=1, method="best", prune="budget")  # all errors, before any work


def test_config_file_errors_before_any_work(tmp_path):
    make_data(tmp_path)
    cfg = tmp_path / "stages.yaml"
    npz = tmp_path / "features.npz"
    cfg.write_text(f"pool: {tmp_path / 'pool'}\nselection: {{k: 4, pool_budget: 150}}\n"
                   f"stages:\n  - {{stage: 1, data: {tmp_path / 'taskA.jsonl'}, source: taskA, features_from: {npz}, "
                   f"selection: {{budget: 40}}}}\n"
                   f"  - {{stage: 2, data: {tmp_path / 'missing.jsonl'}, source: taskB, features_from: {npz}, "
                   f"selection: {{budget: 40, budgett: 3}}}}\n")
    with pytest.raises(ValueError, match="stages.1(.|\n)*budgett(.|\n)*") as err:
        load_stage_config(cfg)
    assert "missing.jsonl does not exist" in str(err.value) or "budgett" in str(err.value)
    assert cli.main(["stage", "--config", str(cfg)]) == 2
    assert not (tmp_path / "pool").exists(), "stage 1 must not run when stage 2's config is wrong"
    cfg.write_text(cfg.read_text().replace("budgett: 3", "k: 4"))
    with pytest.raises(ValueError, match="stages.1: data file .*missing.jsonl does not exist"):
        load_stage_config(cfg)
    cfg.write_text(cfg.read_text().replace("missing.jsonl", "taskB.jsonl"))
    assert cli.main(["stage", "--config", str(cfg)]) == 0
    assert PoolStore(tmp_path / "pool").counts()["pruned"] == 60


def test_flat_cli_commands(tmp_path, capsys):
    make_data(tmp_path)
    pool = str(tmp_path / "pool")
    run = lambda *a: cli.main([*a, "--pool", pool])  # noqa: E731
    assert run("add", "--data", str(tmp_path / "taskA.jsonl"), "--source", "taskA") == 0
    assert run("features", "--from", str(tmp_path / "features.npz")) == 0
    assert run("cluster", "--k", "4") == 0
    assert run("cluster", "--k", "4") == 2  # already done
    assert run("cluster", "--k", "4", "--resume") == 0
    assert run("cluster", "--elbow", "2,4,6", "--resume") == 0
    assert (tmp_path / "pool" / "stages" / "stage-001" / "elbow.png").exists()
    assert run("select", "--budget", "30") == 0
    assert run("prune", "--pool-budget", "100") == 0
    assert run("status") == 0
    out = capsys.readouterr().out
    counts = PoolStore(pool).counts()
    assert counts["pool"] + counts["selected"] == 100 and counts["pruned"] == 20
    assert f"pool {counts['pool']}, selected {counts['selected']}, pruned 20" in out and "selector per cluster" in out
    assert run("plots") == 0
    assert {p.stem for p in (tmp_path / "pool" / "plots").glob("*.png")} == {
        "pool-size", "stage-001-cluster-sources", "stage-001-source-shares", "stage-001-selectors",
        "stage-001-score-distributions"}


def test_flat_stage_config_still_loads_with_a_deprecation_note(tmp_path):
    make_data(tmp_path)
    flat = tmp_path / "flat.yaml"
    flat.write_text(f"k: 4\nfeatures_from: {tmp_path / 'features.npz'}\npool_budget: 150\nbudget: 40\nseed: 3\n"
                    f"stages:\n  - {{stage: 1, data: {tmp_path / 'taskA.jsonl'}, source: taskA, budget: 30, out_dim: 64}}\n")
    with pytest.warns(DeprecationWarning, match="flat stage config"):
        _, (cfg,) = load_stage_config(flat)
    assert (cfg.k, cfg.pool_budget, cfg.budget, cfg.seed, cfg.features_from) == (4, 150, 30, 3, str(tmp_path / "features.npz"))
    assert cfg.out_dim == 64 and cfg.layers == "last"  # a per-stage feature key of the old format
    flat.write_text(f"pool: {tmp_path / 'p'}\nstages:\n  - {{stage: 1, data: {tmp_path / 'taskA.jsonl'}, source: taskA, "
                    f"features_from: {tmp_path / 'features.npz'}, k: 3, pool_budget: 100}}\n")  # flat keys in stages only
    with pytest.warns(DeprecationWarning, match="flat stage config"):
        pool, (cfg,) = load_stage_config(flat)
    assert (pool, cfg.k, cfg.pool_budget) == (str(tmp_path / "p"), 3, 100)


KILL_POINTS = ["add:artifacts", "features:start", "cluster:artifacts", "select:artifacts", "prune:artifacts"]


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    """A stage config, the command that runs it, and the pool an uninterrupted run leaves."""
    tmp = tmp_path_factory.mktemp("resume")
    make_data(tmp)
    cfg = tmp / "stages.yaml"
    cfg.write_text(f"seed: 3\nselection: {{k: 4, pool_budget: 150, budget: 40, scores: [ppl, el2n, entropy, grand]}}\n"
                   f"stages:\n  - {{stage: 1, data: {tmp / 'taskA.jsonl'}, source: taskA, features_from: {tmp / 'features.npz'}}}\n"
                   f"  - {{stage: 2, data: {tmp / 'taskB.jsonl'}, source: taskB, features_from: {tmp / 'features.npz'}}}\n")
    base = [sys.executable, "-m", "adaptinf_fast.cli", "stage", "--config", str(cfg), "--pool"]
    env = {k: v for k, v in os.environ.items() if k != "ADAPTINF_FAULT"}
    subprocess.run(base + [str(tmp / "clean")], check=True, env=env, capture_output=True)
    return tmp, base, env, snapshot(tmp / "clean")


@pytest.mark.parametrize("point", KILL_POINTS)
def test_kill_and_resume_equals_uninterrupted(clean_run, point):
    tmp, base, env, want = clean_run
    pool = tmp / point.replace(":", "-")
    killed = subprocess.run(base + [str(pool)], env={**env, "ADAPTINF_FAULT": point}, capture_output=True)
    assert killed.returncode == -9, (point, killed.stderr.decode()[-500:])
    resumed = subprocess.run(base + [str(pool)], env=env, capture_output=True)
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    got = snapshot(pool)
    assert got.keys() == want.keys(), (point, set(got) ^ set(want))
    assert got == want, point


def test_a_second_process_on_a_busy_pool_stops_at_once(tmp_path, capsys):
    """While another live process holds the pool, a second one stops with a clear error and
    writes nothing; once the holder is gone the same command works."""
    make_data(tmp_path)
    pool = tmp_path / "pool"
    add = ["add", "--pool", str(pool), "--data", str(tmp_path / "taskA.jsonl"), "--source", "taskA"]
    with lock_held_elsewhere(pool, "pool"):  # the holder is another process: this one is the second
        assert cli.main(add) == 2
        assert "in use by pid" in capsys.readouterr().err
        assert not (pool / "pool.json").exists()
    assert cli.main(add) == 0


def test_features_step_from_a_saved_peft_model(tmp_path):
    """`features --model DIR`: the base model, adapter and tokenizer load from local folders."""
    import torch
    from transformers import LlamaForCausalLM

    from tiny_models import llama_config, lora, word_tokenizer

    torch.manual_seed(0)
    LlamaForCausalLM(llama_config()).save_pretrained(tmp_path / "base")
    model = lora(LlamaForCausalLM.from_pretrained(tmp_path / "base"))
    model.save_pretrained(tmp_path / "adapter")
    word_tokenizer().save_pretrained(tmp_path / "adapter")
    recs = [{"id": f"r{i}", "conversations": [{"from": "human", "value": "what is the colour ?"},
                                             {"from": "gpt", "value": ["red", "green", "blue"][i % 3]}]} for i in range(9)]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    pool = str(tmp_path / "pool")
    assert cli.main(["add", "--pool", pool, "--data", str(tmp_path / "data.jsonl"), "--source", "colours"]) == 0
    assert cli.main(["features", "--pool", pool, "--model", str(tmp_path / "adapter"), "--layers", "all",
                     "--out-dim", "32", "--batch-size", "4"]) == 0
    sd = StageDir(PoolStore(pool), 1)
    fs = sd.features()
    assert fs.ids == [r["id"] for r in recs] and set(fs.scores) == {"ppl", "el2n", "entropy", "grand", "ig"}
    # the stage's features are the featurizer's fp16 shards, memory-mapped: no second, float32 copy
    assert fs.features.dtype == torch.float16 and not sd.features_npy.exists()
    assert {s.path.parent for s in fs.features.segments} == {sd.shards}
    feats = fs.features.to_tensor()
    assert feats.shape == (9, 32) and torch.allclose(feats.norm(dim=1), torch.ones(9), atol=1e-2)
