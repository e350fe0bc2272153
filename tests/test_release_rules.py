"""rules="release" against the release's rules re-implemented loop for loop (``release_rules.py``),
and hand-made cases for every documented difference from our own rules."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

import release_rules as R
from adaptinf_fast.compat import adapt_inf
from adaptinf_fast.selection import ccs_sample, choose_selectors, release, split_budget
from adaptinf_fast.selection.policy import prune_mask, release_subset
from adaptinf_fast.selection.release import ReleaseCrash


def _values(rs: np.random.RandomState, n: int, kind: int) -> np.ndarray:
    x = rs.randn(n) * rs.choice([1e-3, 0.1, 1.0, 30.0]) + rs.choice([0.0, 5.0])
    if kind == 1:
        x = np.round(x, 1)  # many exact ties, values sitting on bin edges
    if kind == 2:
        x[:] = 3.0  # no spread
    if kind == 3:
        x[rs.rand(n) < 0.1] = np.nan
    return x.astype(np.float32)


def _same(a: float, b: float) -> bool:
    return a == b or (np.isnan(a) and np.isnan(b))


def _outcome(fn, *args):
    try:
        return fn(*args), None
    except (ValueError, ZeroDivisionError) as exc:
        return None, exc


def test_entropy_is_the_release_entropy_bit_for_bit():
    rs = np.random.RandomState(0)
    for t in range(200):
        x = _values(rs, rs.randint(1, 500), t % 4)
        assert _same(release.entropy(x), R.dist_entropy(x)), t
        assert _same(adapt_inf.get_dist_entropy(x), R.dist_entropy(x))


def test_selector_is_the_release_choice_nan_and_ties_included():
    rs = np.random.RandomState(1)
    for t in range(100):
        n = rs.randint(2, 200)
        scores = {name: _values(rs, n, rs.randint(0, 4)) for name in ("entropy", "grand", "el2n", "ppl")}
        idx = np.flatnonzero(rs.rand(n) < 0.7)
        if idx.size == 0:
            continue
        assert release.choose_selector(scores, idx) == R.mwp_name(scores, idx)
        np.testing.assert_array_equal(adapt_inf.get_mwp_score(scores, idx), scores[R.mwp_name(scores, idx)][idx])


def test_ccs_same_positions_and_random_stream_and_same_crashes():
    rs = np.random.RandomState(2)
    crashes = 0
    for t in range(300):
        n = rs.randint(1, 400)
        x = _values(rs, n, t % 3)
        budget = rs.randint(0, n + 5)
        r1, r2 = random.Random(t), random.Random(t)
        want, err = _outcome(R.ccs_release, x, 50, budget, r1)
        if err is not None:
            crashes += 1
            with pytest.raises(ReleaseCrash, match="negative"):
                release.ccs(x, 50, budget, r2)
            continue
        np.testing.assert_array_equal(release.ccs(x, 50, budget, r2), want)
        assert r1.random() == r2.random()  # the same draws were made
    assert crashes > 0  # the sweep reaches the release's crash


def test_compat_ccs_draws_from_the_global_random_module():
    x = np.random.RandomState(3).rand(300).astype(np.float32)
    random.seed(7)
    want = R.ccs_release(x, 50, 120, random)
    after = random.random()
    random.seed(7)
    np.testing.assert_array_equal(adapt_inf.get_ccs_samples(x, 50, 120), want)
    assert random.random() == after


def test_budgets_equal_the_release_split_and_its_crash():
    rs = np.random.RandomState(4)
    crashes = 0
    for t in range(400):
        sizes = rs.randint(0, 60, size=rs.randint(1, 12)).tolist()
        total = rs.randint(0, 500)
        want, err = _outcome(R.budget_split, sizes, total, len(sizes))
        if err is not None:
            crashes += 1
            with pytest.raises(ReleaseCrash, match="divides by zero"):
                release.budgets(sizes, total, len(sizes))
        else:
            assert release.budgets(sizes, total, len(sizes)) == want
            assert adapt_inf.assign_budget_to_cluster(sizes, total, len(sizes)) == want
    assert crashes > 0


def _weighted_oracle(sizes, total, k, el2n, labels):
    # the release's score-weighted split, as its source reads
    el2n = np.nan_to_num(el2n)
    probs = [np.std(el2n[np.where(labels == i)[0]]) for i in range(k)]
    probs = [s / sum(probs) for s in probs]
    got = [int(p * total) for p in probs]
    order = np.argsort(sizes)
    with np.errstate(divide="ignore", invalid="ignore"):
        for i, idx in enumerate(order):
            p = probs[idx]
            if sizes[idx] < got[idx]:
                rem = (p - sizes[idx] / total) / (k - i - 1)
                for nxt in order[i + 1:]:
                    probs[nxt] += rem
                    got[nxt] = int(probs[nxt] * total)
                got[idx] = sizes[idx]
    return got


def test_weighted_budgets_equal_the_release():
    rs = np.random.RandomState(5)
    for t in range(100):
        k = rs.randint(2, 8)
        labels = rs.randint(0, k, size=300)
        labels[:k] = np.arange(k)
        el2n = (rs.rand(300) * rs.rand(k)[labels]).astype(np.float32)
        sizes = [int((labels == c).sum()) for c in range(k)]
        total = rs.randint(1, 400)
        assert adapt_inf.assign_budget_to_cluster(sizes, total, k, score_weighted=True, el2n_scores=el2n,
                                                  labels=labels) == _weighted_oracle(sizes, total, k, el2n, labels)


def _pool(rs: np.random.RandomState, n: int, d: int, k: int):
    emb = rs.randn(n, d).astype(np.float16).astype(np.float32)  # the stage stores fp16 features
    src = rs.randint(0, n, size=n // 8)
    emb[rs.randint(0, n, size=n // 8)] = emb[src]  # planted exact duplicates
    labels = rs.randint(0, k, size=n)
    labels[:k] = np.arange(k)
    scores = {"ppl": np.exp(rs.randn(n)).astype(np.float32), "el2n": rs.rand(n).astype(np.float32),
              "entropy": (rs.randn(n) * 0.1 + 2).astype(np.float32), "grand": (rs.rand(n) * 50).astype(np.float32)}
    if rs.rand() < 0.5:
        scores["el2n"][labels == 0] = 0.5  # a score with no spread in one cluster: the release picks it
    return emb, labels, scores


def test_prune_keeps_the_release_ids_in_its_order():
    rs = np.random.RandomState(6)
    for t in range(30):
        n, k = rs.randint(50, 600), rs.randint(1, 8)
        emb, labels, _ = _pool(rs, n, rs.choice([8, 33, 64]), k)
        keep = rs.randint(1, n)
        want, err = _outcome(R.semdedup_release, emb, labels, k, keep)
        if err is not None:
            with pytest.raises(ReleaseCrash):
                release.prune(torch.from_numpy(emb), torch.from_numpy(labels), k, keep)
            continue
        kept, m = adapt_inf.semdedup(emb, labels, k, int(keep))
        np.testing.assert_array_equal(kept, want[0])
        np.testing.assert_allclose(m, want[1], atol=1e-6)
        drop = prune_mask(torch.from_numpy(emb), torch.from_numpy(labels), mode="budget", pool_budget=keep,
                          rules="release", k=k)
        assert set(np.flatnonzero(~drop.numpy()).tolist()) == set(want[0].tolist())


@pytest.mark.parametrize("score", [None, "el2n"], ids=["mwp", "score-type"])
@pytest.mark.parametrize("prune", [False, True], ids=["select", "semdedup+select"])
def test_selection_equals_the_release_ids(score, prune):
    rs = np.random.RandomState(7 + 2 * prune + (score is None))
    checked = crashed = 0
    for t in range(25):
        n, k = rs.randint(150, 700), rs.randint(2, 8)
        emb, labels, scores = _pool(rs, n, rs.choice([16, 64]), k)
        keep = int(rs.randint(n // 2, n)) if prune else None
        budget = int(rs.randint(1, (keep or n) // 2))
        file_order = {name: scores[name] for name in ("entropy", "grand", "el2n", "ppl")}
        want, err = _outcome(lambda: R.release_main(labels, R.load_scores_release(file_order), k, budget,
                                                    random.Random(t), emb=emb, keep=keep, score_type=score))
        method = "adaptinf" if score is None else f"score:{score}"
        call = lambda: release_subset(torch.from_numpy(emb), torch.from_numpy(labels),  # noqa: E731
                                      {name: torch.from_numpy(v) for name, v in scores.items()}, method=method,
                                      budget=budget, k=k, seed=t, pool_budget=keep)
        if err is not None:
            crashed += 1
            with pytest.raises(ReleaseCrash):
                call()
            continue
        got, info = call()
        assert got.tolist() == sorted(want[0].tolist()), t
        assert len(set(want[0].tolist())) == len(want[0])
        checked += 1
    assert checked >= 15


# -- hand-made cases, one per documented difference ------------------------------------------------

def test_difference_selector_scale_and_zero_spread():
    rs = np.random.RandomState(8)
    labels = torch.zeros(400, dtype=torch.long)
    a = rs.randn(400).astype(np.float32)
    b = rs.exponential(size=400).astype(np.float32)
    # ours is scale-free: multiplying a score by 1000 changes nothing
    ours = [choose_selectors({"a": torch.from_numpy(a * s), "b": torch.from_numpy(b)}, labels)[0] for s in (1, 1000)]
    assert ours[0] == ours[1]
    # the release's bins span ±4σ of the raw σ over the z-scores: a small-σ score drops almost every
    # value outside its bins and a large-σ one piles into two bins, so scaling flips its choice
    picks = {s: release.choose_selector({"a": a * s, "b": b}, np.arange(400)) for s in (0.3, 1, 1000)}
    assert len(set(picks.values())) > 1
    # zero spread: NaN wins the release's argmax; ours gives it entropy 0
    flat = np.full(400, 2.0, np.float32)
    assert release.choose_selector({"a": a, "flat": flat}, np.arange(400)) == "flat"
    assert choose_selectors({"a": torch.from_numpy(a), "flat": torch.from_numpy(flat)}, labels)[0] == "a"


def test_difference_budgets_round_up():
    sizes = [100, 100, 100]
    assert sum(release.budgets(sizes, 10, 3)) == 12  # ceil(10 / 3) each
    assert int(split_budget(torch.tensor(sizes), 10).sum()) == 10
    with pytest.raises(ReleaseCrash, match="adaptinf"):
        release.budgets([3, 4], 20, 2)  # the clusters cannot hold 20: the release divides by zero
    assert split_budget(torch.tensor([3, 4]), 20).tolist() == [3, 4]


def test_difference_ccs_quota_and_no_refill():
    x = np.linspace(0, 1, 1000, dtype=np.float32)
    got = release.ccs(x, 50, 1, random.Random(0))
    assert got.size == 50  # ceil(1 / 50) = 1 from each of the 50 full bins
    assert ccs_sample(torch.from_numpy(x), 1, torch.Generator().manual_seed(0)).numel() == 1
    # samples crowded in the top bin: the release takes its quota there, passes the sparse bins'
    # shortfalls downwards and never comes back for them
    y = np.concatenate([np.full(900, 1.0), np.linspace(0, 1, 100)]).astype(np.float32)
    short = release.ccs(y, 50, 400, random.Random(0))
    assert short.size < 400
    assert ccs_sample(torch.from_numpy(y), 400, torch.Generator().manual_seed(0)).numel() == 400


def test_difference_pruning_order_and_clamp():
    # sample 0 and 2 are duplicates; 1 is opposite to both. Index order keeps 0 (M = 0) and drops
    # the later duplicate 2; the clamp turns 1's negative similarity into 0, a tie with sample 0.
    e = torch.tensor([[1.0, 0.0], [-1.0, 0.05], [1.0, 0.0], [0.6, 0.8]])
    labels = torch.zeros(4, dtype=torch.long)
    kept, m = release.prune(e, labels, 1, 3)
    assert 2 not in kept.tolist() and m[0] == 0 and m[1] == 0
    from adaptinf_fast.ops.dedup import cluster_max_similarity

    true_m, _ = cluster_max_similarity(e, labels)
    assert true_m[1] < 0 and true_m[0] == -float("inf")


def test_release_selection_refuses_small_clusters_with_the_reason():
    labels = torch.tensor([0] * 30 + [1] * 5)
    scores = {"el2n": torch.rand(35)}
    with pytest.raises(ReleaseCrash, match="k=10"):
        release_subset(torch.randn(35, 4), labels, scores, method="adaptinf", budget=10, k=2, seed=0)


# -- the stage and the CLI under rules="release" ---------------------------------------------------

def _stage_oracle(stage_dir, k, budget, keep, seed):
    """The release's ids on what the stage stored: its features (as the stage reads them), scores
    and cluster labels."""
    from adaptinf_fast.lifelong import PoolStore
    from adaptinf_fast.lifelong.steps import StageDir

    fs = StageDir(PoolStore(stage_dir.parents[1]), int(stage_dir.name.split("-")[1])).features()
    emb = fs.features.to_tensor().numpy()
    labels = np.load(stage_dir / "labels.npy")
    scores = R.load_scores_release({n: fs.scores[n].tolist() for n in ("entropy", "grand", "el2n", "ppl")})
    sel, kept = R.release_main(labels, scores, k, budget, random.Random(seed), emb=emb, keep=keep)
    ids = fs.ids
    return {ids[i] for i in sel}, None if kept is None else {ids[i] for i in kept}


def test_stage_with_release_rules_selects_and_prunes_the_release_ids(tmp_path):
    import json

    from test_lifelong import make_data, stage_cfgs

    from adaptinf_fast.lifelong import PoolStore, run_stage

    make_data(tmp_path)
    for cfg in stage_cfgs(tmp_path):
        cfg.rules = "release"
        rec = run_stage(tmp_path / "pool", cfg)
        d = PoolStore(tmp_path / "pool").stage_dir(cfg.stage)
        n = len(json.loads((d / "features.json").read_text())["ids"])
        keep = cfg.pool_budget if n > cfg.pool_budget else None
        want_sel, want_kept = _stage_oracle(d, cfg.k, cfg.budget, keep, cfg.seed)
        assert set(json.loads((d / "selection.json").read_text())["ids"]) == want_sel
        pruned = set(json.loads((d / "prune.json").read_text())["ids"])
        ids = set(json.loads((d / "features.json").read_text())["ids"])
        assert pruned == (set() if want_kept is None else ids - want_kept)
        assert rec["select"]["rules"] == "release"
    assert keep is not None  # stage 2's pool is over budget: pruned before selecting, as the release


def test_release_rules_in_configs_and_the_cli(tmp_path):
    from test_lifelong import make_data

    from adaptinf_fast import cli
    from adaptinf_fast.lifelong import StageConfig

    make_data(tmp_path)
    with pytest.raises(ValueError, match="rules"):
        StageConfig(stage=1, rules="paper", pool_budget=5)
    with pytest.raises(ValueError, match="threshold"):
        StageConfig(stage=1, rules="release", prune="threshold")
    from adaptinf_fast.lifelong.config import RunConfig

    cfg = RunConfig.model_validate({"selection": {"rules": "release"}})
    assert cfg.stage_config(1, "a", None).rules == "release"
    pool = str(tmp_path / "pool")
    run = lambda *a: cli.main([*a, "--pool", pool])  # noqa: E731
    assert run("add", "--data", str(tmp_path / "taskA.jsonl"), "--source", "taskA") == 0
    assert run("features", "--from", str(tmp_path / "features.npz")) == 0
    assert run("cluster", "--k", "4") == 0
    assert run("select", "--budget", "30", "--rules", "release", "--pool-budget", "100", "--seed", "3") == 0
    d = tmp_path / "pool" / "stages" / "stage-001"
    import json

    want, _ = _stage_oracle(d, 4, 30, 100, 3)
    assert set(json.loads((d / "selection.json").read_text())["ids"]) == want
