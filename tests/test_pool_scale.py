"""Pools of millions: the stage's features are a memory-mapped 16-bit view and every step streams it.
The streamed path (tiny chunks, pruning out of core) equals the in-memory one; a pool whose features
are far larger than the memory its steps may use runs inside that memory; pruning splits across
two processes (and resumes after a kill there) with the ids of one process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from adaptinf_fast.featureview import FeatureView, Segment, open_array, to_storage
from adaptinf_fast.lifelong import POOL_STEPS, Context, PoolStore, run_steps
from adaptinf_fast.lifelong.steps import StageDir
from adaptinf_fast.ops.dedup import cluster_max_similarity, semdedup_order
from adaptinf_fast.ops.kmeans import KMeans
from adaptinf_fast.selection.policy import prune_mask, select_subset
from test_lifelong import make_data, stage_cfgs


# ---- the view ------------------------------------------------------------------------------------

def test_a_view_reads_the_rows_of_its_segments_in_order(tmp_path, rng):
    a, b = (torch.randn(n, 6, generator=rng) for n in (11, 7))
    np.save(tmp_path / "a.npy", to_storage(a, "float16"))
    np.save(tmp_path / "b.npy", to_storage(b, "bfloat16"))
    np.save(tmp_path / "c.npy", to_storage(b, "float16"))
    with pytest.raises(ValueError, match="differ"):
        FeatureView([Segment(open_array(tmp_path / "a.npy"), "float16"), Segment(open_array(tmp_path / "b.npy"), "bfloat16")])
    view = FeatureView.of_files([tmp_path / "a.npy", tmp_path / "c.npy"], "float16")
    full = torch.cat([a, b]).half()
    assert view.shape == (18, 6) and view.dtype == torch.float16
    assert torch.equal(view[3:15], full[3:15]) and torch.equal(view[[17, 0, 11, 10, 3, 3]], full[[17, 0, 11, 10, 3, 3]])
    picked = view.select([12, 1, 16, 9])
    assert torch.equal(picked.to_tensor(torch.float16), full[[12, 1, 16, 9]])
    assert torch.equal(FeatureView.load(picked.describe(tmp_path, "pick"), tmp_path).to_tensor(), picked.to_tensor())
    bf = FeatureView.of_files([tmp_path / "b.npy"], "bfloat16")
    assert bf.dtype == torch.bfloat16 and torch.equal(bf[0:7], b.bfloat16())
    np.savez(tmp_path / "z.npz", features=a.half().numpy())  # an uncompressed member is mapped in place
    assert np.array_equal(np.asarray(open_array(tmp_path / "z.npz", "features")), a.half().numpy())


# ---- streamed = in memory -------------------------------------------------------------------------

def _stage(tmp: Path, rows_in_memory: int | None, t_last: int = 2):
    pool = PoolStore(tmp / f"pool-{rows_in_memory}", create=True)
    for cfg in stage_cfgs(tmp)[:t_last]:
        if rows_in_memory:
            cfg = cfg.model_copy(update={"rows_in_memory": rows_in_memory})
        run_steps(cfg, Context(pool, progress=False), POOL_STEPS, POOL_STEPS)
    return pool


def test_the_streamed_stage_equals_the_in_memory_decisions(tmp_path, monkeypatch):
    """Stage 2 of the lifelong test pool through the view (default, and with 64-row chunks and
    pruning groups: clusters of ~50 rows packed, the largest tiled out of core), against k-means,
    selection and pruning on the same features as one float32 tensor."""
    import adaptinf_fast.ops.dedup.reference as ref
    import adaptinf_fast.ops.dedup.streamed as streamed

    make_data(tmp_path)
    for mod in (ref, streamed):  # small tiles, so 64 rows hold several of them
        monkeypatch.setattr(mod, "ROW_TILE", 16)
        monkeypatch.setattr(mod, "COL_CHUNK", 24)
    pools = [_stage(tmp_path, rows) for rows in (None, 64)]
    cfg = stage_cfgs(tmp_path)[1]
    sd = StageDir(pools[0], 2)
    fs = sd.features()
    assert isinstance(fs.features, FeatureView)
    x = fs.features.to_tensor()  # the in-memory path, on the very values the stage read
    km = KMeans(cfg.k, metric="cosine", n_init=3, seed=cfg.seed).fit(x)
    labels = sd.labels()
    assert torch.equal(km.labels_, labels)
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + 2)
    chosen, _ = select_subset(x, labels, fs.scores, method=cfg.method, budget=cfg.budget, generator=gen,
                              score_order=cfg.scores)
    drop = prune_mask(x, labels, mode="budget", pool_budget=cfg.pool_budget)
    assert drop.sum() > 0  # stage 2's pool is over its budget
    for pool in pools:
        s = StageDir(pool, 2)
        assert torch.equal(s.labels(), labels)
        assert s.selection() == [fs.ids[i] for i in chosen.tolist()]
        assert set(json.loads(s.prune_json.read_text())["ids"]) == {fs.ids[i] for i in drop.nonzero().flatten().tolist()}
    assert (pools[0].root / pools[0].state.manifest).read_text() == (pools[1].root / pools[1].state.manifest).read_text()


def test_out_of_core_max_similarity_is_the_references_value_for_value(tmp_path, rng, monkeypatch):
    import adaptinf_fast.ops.dedup.reference as ref
    import adaptinf_fast.ops.dedup.streamed as streamed

    for mod in (ref, streamed):
        monkeypatch.setattr(mod, "ROW_TILE", 16)
        monkeypatch.setattr(mod, "COL_CHUNK", 40)
    x = torch.randn(700, 12, generator=rng).half()
    x[300:320] = x[40]  # duplicates: ties go to the earliest
    labels = torch.randint(0, 3, (700,), generator=rng)
    labels[:450] = 0  # one cluster far larger than the groups
    np.save(tmp_path / "x.npy", x.numpy())
    view = FeatureView.of_files([tmp_path / "x.npy"], "float16")
    order = semdedup_order(x, labels, "hard")
    assert torch.equal(semdedup_order(view, labels, "hard", chunk_rows=50), order)
    want = cluster_max_similarity(x, labels, order=order, backend="torch")
    for rows in (None, 1000, 100, 64):
        got = cluster_max_similarity(view, labels, order=order, backend="torch", max_rows=rows)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), rows


# ---- bounded memory ------------------------------------------------------------------------------

MEMORY_SCRIPT = textwrap.dedent("""
    import json, sys, threading, time
    import sklearn.metrics  # imported by the cluster step (agreement with the sources): an import, not the step's memory
    from adaptinf_fast.lifelong import POOL_STEPS, Context, PoolStore, StageConfig, run_steps

    def anon():
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024

    pool, cfg = PoolStore(sys.argv[1]), StageConfig.model_validate_json(sys.argv[2])
    out = {}
    for step in (sys.argv[3].split(",") if len(sys.argv) > 3 else ("cluster", "select", "prune")):
        base, peak, done = anon(), [0], [False]
        def watch():
            while not done[0]:
                peak[0] = max(peak[0], anon())
                time.sleep(0.002)
        th = threading.Thread(target=watch)
        th.start()
        run_steps(cfg, Context(pool, progress=False), (step,), POOL_STEPS)
        done[0] = True
        th.join()
        out[step] = max(peak[0], anon()) - base
    print(json.dumps(out))
""")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RssAnon from /proc")
def test_a_pool_far_larger_than_the_memory_budget_runs_inside_it(tmp_path):
    """200k samples x 512 fp16 features (195 MiB on disk, 391 MiB as float32) with 1024 rows in
    memory: each step's peak anonymous memory stays within its documented estimate (generous
    margin) and below even a 16-bit copy of the features."""
    from adaptinf_fast.lifelong import StageConfig
    from adaptinf_fast.lifelong.memory import estimate

    n, d, k = 200_000, 512, 16
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((k, d)).astype(np.float32) * 3
    feats = np.empty((n, d), np.float16)
    for r0 in range(0, n, 10_000):
        feats[r0 : r0 + 10_000] = centers[np.arange(r0, r0 + 10_000) % k] + rng.standard_normal((10_000, d))
    ids = np.array([f"s{i}" for i in range(n)])
    np.savez(tmp_path / "features.npz", ids=ids, features=feats,
             **{f"score_{s}": rng.gamma(2.0, size=n).astype(np.float32) for s in ("ppl", "el2n", "entropy", "grand")})
    with open(tmp_path / "data.jsonl", "w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"s{i}", "conversations": [{"from": "human", "value": "q"},
                                                                 {"from": "gpt", "value": "a"}]}) + "\n")
    del feats
    cfg = StageConfig(stage=1, data=str(tmp_path / "data.jsonl"), source="big", features_from=str(tmp_path / "features.npz"),
                      k=k, budget=5_000, pool_budget=180_000, scores=["ppl", "el2n", "entropy", "grand"], rows_in_memory=1024)
    pool = PoolStore(tmp_path / "pool", create=True)
    run_steps(cfg, Context(pool, progress=False), ("add", "features"), POOL_STEPS)
    res = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(pool.root), cfg.model_dump_json()],
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    peaks = json.loads(res.stdout.strip().splitlines()[-1])
    print("peak anonymous bytes per step", peaks)
    est = estimate(n, d, k, largest_cluster=n // k, storage_bytes=2, chunk_rows=1024, max_rows=1024, scores=4)
    on_disk = n * d * 2
    for step, peak in peaks.items():
        assert peak < 1.5 * est[step] + (32 << 20), (step, peak, est[step])
        assert peak < on_disk, (step, peak)  # nothing held the features whole, not even in 16 bits
    pool.reload()
    assert pool.counts()["pruned"] == n - 180_000


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RssAnon from /proc")
def test_a_selection_that_prunes_first_stays_inside_the_budget_too(tmp_path):
    """`method: semdedup` runs a whole-pool max-similarity pass inside `select`: with 512 rows in
    memory its peak stays within the select estimate (with the prune working set) and below a float32
    copy of the features (unbounded, one group held the whole pool: ~5x more), and it keeps the ids of
    the unbounded pass."""
    from adaptinf_fast.lifelong import StageConfig
    from adaptinf_fast.lifelong.memory import estimate

    n, d, k = 40_000, 2048, 4
    rng = np.random.default_rng(1)
    feats = (rng.standard_normal((k, d)) * 3)[np.arange(n) % k] + rng.standard_normal((n, d))
    feats[n // 2 : n // 2 + 500] = feats[:500]  # planted duplicates
    feats = feats.astype(np.float16)
    ids = np.array([f"s{i}" for i in range(n)])
    np.savez(tmp_path / "features.npz", ids=ids, features=feats, score_ppl=rng.gamma(2.0, size=n).astype(np.float32))
    with open(tmp_path / "data.jsonl", "w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"s{i}", "conversations": [{"from": "human", "value": "q"},
                                                                 {"from": "gpt", "value": "a"}]}) + "\n")
    cfg = StageConfig(stage=1, data=str(tmp_path / "data.jsonl"), source="big", features_from=str(tmp_path / "features.npz"),
                      k=k, budget=1_000, method="semdedup", eps=0.05, scores=["ppl"], rows_in_memory=512)
    pool = PoolStore(tmp_path / "pool", create=True)
    run_steps(cfg, Context(pool, progress=False), ("add", "features", "cluster"), POOL_STEPS)
    res = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(pool.root), cfg.model_dump_json(), "select"],
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    peak = json.loads(res.stdout.strip().splitlines()[-1])["select"]
    est = estimate(n, d, k, largest_cluster=n // k, storage_bytes=2, chunk_rows=512, max_rows=512, scores=1,
                   select_prunes=True)
    assert peak < 1.5 * est["select"] + (32 << 20) and peak < n * d * 4, (peak, est["select"])  # no float32 copy
    sd = StageDir(pool, 1)
    gen = lambda: torch.Generator().manual_seed(cfg.seed * 1_000_003 + 1)  # noqa: E731  the step's generator
    want, info = select_subset(torch.from_numpy(feats), sd.labels(), {}, method="semdedup", budget=1_000,
                               generator=gen(), eps=0.05)
    assert info["semdedup_kept"] <= n - 500
    assert json.loads(sd.selection_json.read_text())["ids"] == [f"s{i}" for i in want.tolist()]


# ---- pruning across ranks ---------------------------------------------------------------------------

PRUNE_SCRIPT = textwrap.dedent("""
    import sys
    import torch.distributed as dist
    from adaptinf_fast.lifelong import POOL_STEPS, Context, PoolStore, StageConfig, run_steps

    dist.init_process_group("gloo")
    run_steps(StageConfig.model_validate_json(sys.argv[2]), Context(PoolStore(sys.argv[1]), progress=False),
              ("prune",), POOL_STEPS)
    dist.destroy_process_group()
""")


@pytest.mark.slow
def test_pruning_split_over_two_ranks_keeps_the_ids_of_one_process_and_resumes_after_a_kill(tmp_path):
    make_data(tmp_path)
    first, second = stage_cfgs(tmp_path)
    pool = PoolStore(tmp_path / "ready", create=True)
    run_steps(first, Context(pool, progress=False), POOL_STEPS, POOL_STEPS)
    run_steps(second, Context(pool, progress=False), ("add", "features", "cluster", "select"), POOL_STEPS)
    copies = {name: tmp_path / name for name in ("one", "two", "killed")}
    for folder in copies.values():
        shutil.copytree(pool.root, folder)
    run_steps(second, Context(PoolStore(copies["one"]), progress=False), ("prune",), POOL_STEPS)
    script = tmp_path / "prune.py"
    script.write_text(PRUNE_SCRIPT)
    small = second.model_copy(update={"rows_in_memory": 64})  # groups and out-of-core tiles on the ranks too
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "ADAPTINF_FAULT")}
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29531", str(script)]
    res = subprocess.run(launch + [str(copies["two"]), small.model_dump_json()], capture_output=True, text=True,
                         env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    killed = subprocess.run(launch + [str(copies["killed"]), small.model_dump_json()], capture_output=True, text=True,
                            env={**env, "ADAPTINF_FAULT": "max_similarity:group"}, timeout=600)
    assert killed.returncode != 0 and not PoolStore(copies["killed"]).state.finished(2, "prune")
    res = subprocess.run(launch + [str(copies["killed"]), small.model_dump_json()], capture_output=True, text=True,
                         env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    want = json.loads((PoolStore(copies["one"]).stage_dir(2) / "prune.json").read_text())
    assert want["ids"]
    for name in ("two", "killed"):
        p = PoolStore(copies[name])
        assert json.loads((p.stage_dir(2) / "prune.json").read_text()) == want, name
        assert (p.root / p.state.manifest).read_text() == (copies["one"] / PoolStore(copies["one"]).state.manifest).read_text()


def test_a_view_refuses_masks_and_negative_indices_and_a_changed_file(tmp_path):
    from adaptinf_fast.lifelong import StageConfig

    np.save(tmp_path / "a.npy", np.arange(12, dtype=np.float16).reshape(6, 2))
    np.save(tmp_path / "b.npy", np.arange(12, dtype=np.float16).reshape(6, 2))
    view = FeatureView.of_files([tmp_path / "a.npy", tmp_path / "b.npy"], "float16")
    with pytest.raises(TypeError, match="boolean mask"):
        view[np.ones(12, dtype=bool)]
    with pytest.raises(IndexError, match="negative"):
        view[[-1]]
    # the stage maps the --from file where it lies: rewriting it afterwards is caught, not read silently
    make_data(tmp_path)
    cfg = stage_cfgs(tmp_path)[0]
    pool = PoolStore(tmp_path / "pool", create=True)
    run_steps(cfg, Context(pool, progress=False), ("add", "features"), POOL_STEPS)
    z = dict(np.load(tmp_path / "features.npz"))
    z["features"] = z["features"][::-1].copy()
    np.savez(tmp_path / "features.npz", **z)
    with pytest.raises(ValueError, match="changed since its features were recorded"):
        run_steps(cfg, Context(pool, progress=False), ("cluster",), POOL_STEPS)
