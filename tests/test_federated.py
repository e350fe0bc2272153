"""Federated continual tuning (``adaptinf_fast.federated``): FCIT's split and sampling, DISCO's and
PILoRA's aggregation against hand computations, PILoRA's loss terms, kill-and-resume of a federated
run, Flower's engine against the in-process one, and the demo's command."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from adaptinf_fast.federated import (Prototypes, dirichlet_split, disco_aggregate, greedy_groups, pilora_centres,
                                     sample_clients, shard_stage, stage_tasks, weighted_mean)
from adaptinf_fast.federated.aggregate import slot_state
from adaptinf_fast.federated.config import FederatedRunConfig
from adaptinf_fast.lifelong.pool import PoolStore
from test_lifelong_run import two_tasks


# -- split and sampling ------------------------------------------------------------------------------

@pytest.mark.parametrize("n,clients,beta,min_size", [(100, 7, 0.1, 3), (1000, 50, 1.0, 1), (12, 12, 0.05, 1),
                                                    (57, 5, 10.0, 0), (1, 1, 0.5, 1)])
def test_dirichlet_split_gives_every_record_once_and_the_minimum(n, clients, beta, min_size):
    parts = dirichlet_split(n, clients, beta, min_size, seed=3)
    assert len(parts) == clients
    flat = np.concatenate(parts)
    assert sorted(flat.tolist()) == list(range(n))  # each record exactly once, none dropped
    assert min(len(p) for p in parts) >= min_size
    again = dirichlet_split(n, clients, beta, min_size, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))


def test_dirichlet_split_follows_beta_and_refuses_the_impossible():
    spread = lambda beta: np.mean([np.std([len(p) for p in dirichlet_split(1000, 10, beta, 0, seed=s)]) for s in range(20)])
    assert spread(0.1) > 3 * spread(100.0)  # small beta: unequal shares; large: near-equal
    with pytest.raises(ValueError, match="cannot give"):
        dirichlet_split(10, 4, 1.0, 3)
    with pytest.raises(ValueError):
        dirichlet_split(10, 4, 0.0)


def test_round_sampling_and_stage_plans():
    a = sample_clients(2, 3, 50, 5, seed=1)
    assert a == sorted(set(a)) and len(a) == 5 and all(0 <= c < 50 for c in a)
    assert a == sample_clients(2, 3, 50, 5, seed=1) and a != sample_clients(2, 4, 50, 5, seed=1)
    with pytest.raises(ValueError):
        sample_clients(1, 0, 3, 4)
    assert stage_tasks(["a", "b", "c"], "task") == [["a"], ["b"], ["c"]]
    assert stage_tasks(["a", "b", "c"], "capability") == [["a", "b"], ["c"]]
    assert stage_tasks(["a", "b", "c"], "capability", [["c", "a"], ["b"]]) == [["c", "a"], ["b"]]
    with pytest.raises(ValueError):
        stage_tasks(["a", "b"], "capability", [["a"], ["a"]])
    assert [shard_stage(0, c, True) for c in range(3)] == [0, 0, 0]
    assert [shard_stage(2, c, True) for c in range(3)] == [2, 1, 2]
    assert [shard_stage(2, c, False) for c in range(3)] == [2, 2, 2]


# -- DISCO's server --------------------------------------------------------------------------------

def _planted(rng, centres, labels, noise=0.05):
    return torch.stack([centres[k] + noise * torch.randn(centres.shape[1], generator=rng) for k in labels])


def test_greedy_grouping_finds_planted_client_groups_and_puts_each_client_once():
    rng = torch.Generator().manual_seed(0)
    centres = torch.eye(3, 16) * 3
    labels = [2, 0, 1, 0, 2, 1, 1, 0]
    groups = greedy_groups(_planted(rng, centres, labels), 0.9)
    truth = [[i for i, k in enumerate(labels) if k == g] for g in (2, 0, 1)]  # in order of first appearance
    assert groups == truth
    # a client close to two groups' first members (cos >= 0.9 to both) joins the first only
    a, b = F.normalize(torch.tensor([1.0, 0.0]), dim=0), F.normalize(torch.tensor([math.cos(0.6), math.sin(0.6)]), dim=0)
    mid = F.normalize(a + b, dim=0)
    assert float(a @ mid) >= 0.9 and float(b @ mid) >= 0.9 and float(a @ b) < 0.9
    assert greedy_groups(torch.stack([a, b, mid]), 0.9) == [[0, 2], [1]]


def test_prototypes_reuse_a_slot_above_the_threshold_else_take_a_free_one():
    p = Prototypes(3, 2)
    assert p.choose(torch.tensor([1.0, 0.0])) == 0  # nothing learned: slot 0
    p.add(0, torch.tensor([2.0, 0.0]), 2)
    assert p.choose(torch.tensor([1.0, 0.1])) == 0  # cos > 0.9: reuse
    assert p.choose(torch.tensor([0.0, 1.0])) == 1  # else the first free slot
    p.add(1, torch.tensor([0.0, 3.0]), 1)
    p.add(2, torch.tensor([-5.0, 0.0]), 1)
    assert p.choose(torch.tensor([0.5, 0.6])) == 1  # none above, none free: the most similar
    p.add(0, torch.tensor([0.0, 4.0]), 2)  # the running mean: (P·S + Σf) / (S + n)
    assert torch.allclose(p.means()[0], torch.tensor([0.5, 1.0]))
    q = Prototypes.from_state(p.state())
    assert torch.equal(q.means(), p.means()) and q.used == [0, 1, 2]


def test_fedavg_and_disco_aggregation_equal_hand_computed_weighted_means():
    g = torch.Generator().manual_seed(1)
    states = [{"w": torch.randn(3, 2, generator=g), "b": torch.randn(4, generator=g)} for _ in range(3)]
    n = [5, 1, 4]
    out = weighted_mean(states, n)
    for k in ("w", "b"):
        hand = (5 * states[0][k] + 1 * states[1][k] + 4 * states[2][k]) / 10
        assert torch.allclose(out[k], hand, atol=1e-6)
    with pytest.raises(ValueError):
        weighted_mean(states, [0, 0, 0])

    rank, experts, d_in, d_out = 2, 3, 4, 5
    glob = {"m.lora_A.weight": torch.randn(experts * rank, d_in, generator=g),
            "m.lora_B.weight": torch.randn(d_out, experts * rank, generator=g)}
    trained = [{k: v + torch.randn(v.shape, generator=g) for k, v in glob.items()} for _ in range(3)]
    feats = [torch.tensor([1.0, 0.0]), torch.tensor([0.99, 0.05]), torch.tensor([0.0, 1.0])]  # clients 0, 1 alike
    slots = [0, 0, 1]
    replies = [{"state": slot_state(trained[i], slots[i], rank), "n": n[i], "feature_sum": feats[i] * n[i],
                "feature_count": n[i]} for i in range(3)]
    protos = Prototypes(experts, 2)
    new, groups = disco_aggregate(glob, replies, protos, rank, 0.9)
    assert [gr["members"] for gr in groups] == [[0, 1], [2]] and [gr["slot"] for gr in groups] == [0, 1]
    a, b = "m.lora_A.weight", "m.lora_B.weight"
    hand_a0 = (5 * trained[0][a][0:2] + 1 * trained[1][a][0:2]) / 6
    hand_b0 = (5 * trained[0][b][:, 0:2] + 1 * trained[1][b][:, 0:2]) / 6
    assert torch.allclose(new[a][0:2], hand_a0, atol=1e-6) and torch.allclose(new[b][:, 0:2], hand_b0, atol=1e-6)
    assert torch.allclose(new[a][2:4], trained[2][a][2:4]) and torch.allclose(new[b][:, 2:4], trained[2][b][:, 2:4])
    assert torch.equal(new[a][4:6], glob[a][4:6]) and torch.equal(new[b][:, 4:6], glob[b][:, 4:6])  # untouched slot
    assert torch.allclose(protos.means()[0].double(), (feats[0] * 5 + feats[1] * 1).double() / 6, atol=1e-6)
    assert protos.counts.tolist() == [6, 4, 0]


# -- PILoRA ----------------------------------------------------------------------------------------------

def test_pilora_prototype_reweighting_by_hand():
    c = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [9.0, 9.0]])
    f = torch.tensor([[0.5, 0.0], [1.0, 1.0], [0.0, 1.0], [0.0, 0.0]])
    holds = torch.tensor([True, True, True, False])
    s = []
    for k in range(3):
        s.append(1.0 / sum(math.dist(c[k].tolist(), f[j].tolist()) for j in range(3)))
    s = np.array(s)
    s = (s - s.min()) / (s.max() - s.min())
    w = np.exp(s / 0.2) / np.exp(s / 0.2).sum()
    hand = (w[:, None] * c[:3].numpy()).sum(0)
    assert np.allclose(pilora_centres(c, f, holds, 0.2).numpy(), hand, atol=1e-6)
    assert pilora_centres(c, f, torch.zeros(4, dtype=torch.bool)) is None  # nobody holds it: kept
    same = pilora_centres(c[:2], torch.zeros(2, 2) + torch.tensor([0.5, 0.0]), torch.ones(2, dtype=torch.bool))
    assert torch.allclose(same, c[:2].mean(0))  # equal distances: equal weights, not NaN


def test_pilora_loss_terms_by_hand():
    from adaptinf_fast.federated.pilora import PiloraNet, PiloraSettings, pilora_loss

    s = PiloraSettings(seed=0, hidden=8, layers=1, rank=2, pretrain_epochs=0)
    net = PiloraNet(s, classes=4, tasks=2, image=8)
    x, y = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 2, 3])
    net.use(1)
    past = {"q": [net.q.A[0].detach()], "v": [net.v.A[0].detach()]}
    loss, f = pilora_loss(net, x, y, 1, s, past)
    d = torch.cdist(f, net.centres) / math.sqrt(8)  # sqrt(‖f − c‖² / D)
    ce = F.cross_entropy(-d, y)
    pull = d[torch.arange(3), y].mean()
    l1 = net.q.A[1].abs().sum() + net.v.A[1].abs().sum()
    ortho = (net.q.A[0] @ net.q.A[1].T).abs().sum() + (net.v.A[0] @ net.v.A[1].T).abs().sum()
    hand = ce + 0.001 * pull + 0.01 * l1 + 0.5 * ortho
    assert torch.allclose(loss, hand, atol=1e-5)
    assert float(ortho.detach()) > 0 and float(l1.detach()) > 0


def test_pilora_learns_a_class_stream_and_resumes_after_a_kill(tmp_path):
    from adaptinf_fast.federated.pilora import PiloraRun, PiloraSettings

    s = PiloraSettings(seed=0, clients=6, per_round=3, rounds_per_task=2, local_epochs=5, batch_size=32,
                       lr_centres=0.05, lr_lora=1e-3, classes_per_task=2, pretrain_epochs=30)
    whole = PiloraRun(tmp_path / "whole", s, say=lambda m: None).run()
    a = np.array(whole["accuracy"])
    assert a.shape == (6, 5)
    # each task right after its stage, among every class seen so far (chance <= 1/2): well above it
    assert whole["metrics"]["MFT"] > 0.6 and a[1, 0] > 0.9
    assert PiloraRun(tmp_path / "cut", s, say=lambda m: None).run(stop_after=(2, 1)) == {}
    resumed = PiloraRun(tmp_path / "cut", s, say=lambda m: None).run()
    assert resumed["accuracy"] == whole["accuracy"]
    sw = torch.load(tmp_path / "whole/server/state.pt", weights_only=False)["arrays"]
    sc = torch.load(tmp_path / "cut/server/state.pt", weights_only=False)["arrays"]
    assert all(torch.equal(sw[k], sc[k]) for k in sw)


# -- FCIT on the lifelong loop ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def fed_setting(tmp_path_factory):
    root = tmp_path_factory.mktemp("federated")
    data, tasks, base = two_tasks(root)
    return root, tasks, base, data


def fed_config(aggregation: str, select: bool, **fed) -> FederatedRunConfig:
    return FederatedRunConfig.model_validate({
        "lora": {"r": 2, "alpha": 4}, "train": {"lr": 1e-3, "batch_size": 4}, "eval": {"max_new_tokens": 3, "batch_size": 4},
        "features": {"layers": "all", "out_dim": 32, "batch_size": 8}, "selection": {"k": 2, "budget": 4, "pool_budget": 6},
        "federated": {"clients": 3, "per_round": 2, "rounds_per_task": 2, "local_epochs": 1, "aggregation": aggregation,
                      "experts": 2, "select": select, **fed}})


def _final(out: Path) -> tuple[dict, dict]:
    state = torch.load(out / "server/state.pt", weights_only=False)
    return state, json.loads((out / "summary.json").read_text())


def test_disco_with_selection_on_every_client_resumes_after_kills_to_the_same_result(fed_setting, monkeypatch):
    from adaptinf_fast.federated import fcit
    from adaptinf_fast.federated.fcit import FederatedRun

    root, tasks, base, _ = fed_setting
    cfg = fed_config("disco", True)
    FederatedRun(root / "whole", tasks, cfg, {"base": str(base)}, say=lambda m: None).run()
    cut = root / "cut"
    assert FederatedRun(cut, tasks, cfg, {"base": str(base)}, say=lambda m: None).run(stop_after=(1, 0)) == {}
    real = fcit.run_steps
    crashed = []

    def crash_before_prune(sc, ctx, steps, plan):  # a client dies between its selection and its pruning
        if steps == ("prune",) and not crashed and sc.stage == 2:
            crashed.append(sc.stage)
            raise RuntimeError("killed")
        return real(sc, ctx, steps, plan)

    monkeypatch.setattr(fcit, "run_steps", crash_before_prune)
    with pytest.raises(RuntimeError, match="killed"):
        FederatedRun(cut, tasks, cfg, {"base": str(base)}, say=lambda m: None).run()
    monkeypatch.setattr(fcit, "run_steps", real)
    FederatedRun(cut, tasks, cfg, {"base": str(base)}, say=lambda m: None).run()
    (sw, mw), (sc, mc) = _final(root / "whole"), _final(cut)
    assert crashed and all(torch.equal(sw["weights"][k], sc["weights"][k]) for k in sw["weights"])
    from transformers import LlavaForConditionalGeneration

    initial = {n.partition("multi_modal_projector")[2]: p for n, p in
               LlavaForConditionalGeneration.from_pretrained(base).named_parameters() if "multi_modal_projector" in n}
    trained = {k.partition("multi_modal_projector")[2]: v for k, v in sw["weights"].items() if "multi_modal_projector" in k}
    assert trained.keys() == initial.keys() and initial  # the projector trained on the clients and averaged
    assert any(not torch.equal(trained[k], initial[k].detach()) for k in initial)
    assert torch.equal(sw["protos"]["proto_sums"], sc["protos"]["proto_sums"])
    assert mw["accuracy"] == mc["accuracy"] and len(mw["accuracy"]) == 3
    assert [len(h["clients"]) for h in sw["history"]] == [2] * 4
    for h in sw["history"]:
        assert h["selected"] and all(0 < k <= 4 for k in h["selected"])  # Adapt-∞'s per-client budget
    for c in range(3):  # every client's pool accounts for every record it was given
        folder = root / "whole" / "clients" / f"c{c:03d}"
        if not (folder / "pool").exists():
            continue
        pool = PoolStore(folder / "pool")
        given = sum(len(open(folder / "data" / f"stage-{s}.jsonl").read().splitlines())
                    for s in map(int, json.loads((folder / "stages.json").read_text())))
        assert sum(pool.counts().values()) == given
        assert len(pool.ids()) <= 6  # the pool budget
        resumed = PoolStore(cut / "clients" / f"c{c:03d}" / "pool")  # the killed client's pool ends the same
        assert resumed.rows == pool.rows, c


def test_disco_over_flower_equals_the_in_process_engine(fed_setting):
    pytest.importorskip("flwr")  # installed with the test extra; a bare install skips only this
    from adaptinf_fast.federated.apps import simulate
    from adaptinf_fast.federated.fcit import FederatedRun

    root, tasks, base, _ = fed_setting
    cfg = fed_config("disco", False, rounds_per_task=1)
    FederatedRun(root / "local", tasks[:1], cfg, {"base": str(base)}, say=lambda m: None).run()
    simulate(lambda: FederatedRun(root / "flower", tasks[:1], cfg, {"base": str(base)}, say=lambda m: None), 3)
    (sl, ml), (sf, mf) = _final(root / "local"), _final(root / "flower")
    # the same rounds, the same replies; only float sums differ (Ray's workers run one thread, this process two)
    assert all(torch.allclose(sl["weights"][k], sf["weights"][k], rtol=0, atol=1e-6) for k in sl["weights"])
    assert any(float(v.abs().sum()) > 0 for k, v in sl["weights"].items() if "lora_B" in k)  # trained (B starts at 0)
    assert torch.allclose(sl["protos"]["proto_sums"], sf["protos"]["proto_sums"], rtol=0, atol=1e-6)
    assert ml["accuracy"] == mf["accuracy"] and [h["clients"] for h in sl["history"]] == [h["clients"] for h in sf["history"]]
    assert [h["groups"] for h in sl["history"]] == [h["groups"] for h in sf["history"]]


def test_demo_federated_command_runs_the_three_strategies(tmp_path, capsys):
    from adaptinf_fast.cli import main

    rc = main(["demo-federated", "--out", str(tmp_path), "--engine", "local", "--tasks", "colours,counting",
               "--clients", "3", "--per-round", "2", "--rounds", "1", "--local-epochs", "1", "--n-train", "8",
               "--n-test", "4", "--no-pilora", "--no-progress"])
    assert rc == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert sorted(summary["runs"]) == ["disco", "disco+adaptinf", "fedavg"]
    assert all(np.array(r["accuracy"]).shape == (3, 2) for r in summary["runs"].values())
    assert "disco+adaptinf" in capsys.readouterr().out


def test_capability_and_heterogeneous_shards_follow_the_settings(fed_setting):
    from adaptinf_fast.federated.fcit import FederatedRun

    root, tasks, base, _ = fed_setting
    again = [{**r, "id": f"again-{r['id']}"} for r in tasks[0].train]
    three = tasks + [type(tasks[0])("again", again, tasks[0].test, images=tasks[0].images)]
    cfg = fed_config("disco", False, clients=4, scenario="capability", groups=[["successor", "colours"], ["again"]],
                     heterogeneous=True, beta=0.5, min_size=2)
    run = FederatedRun(root / "cap", three, cfg, {"base": str(base)}, say=lambda m: None)
    run.prepare()
    doc = json.loads((root / "cap/run.json").read_text())
    assert [s["tasks"] for s in doc["stages"]] == [["successor", "colours"], ["again"]]
    shard = lambda c, s: [r["id"] for r in map(json.loads, open(root / f"cap/clients/c{c:03d}/data/stage-{s}.jsonl"))]
    stage1 = [shard(c, 1) for c in range(4)]
    ids = sorted(i for part in stage1 for i in part)
    n_group = len(tasks[0].train) + len(tasks[1].train)
    assert len(ids) == n_group and len(set(ids)) == n_group  # the group's records, each on one client
    assert all(len(part) >= 2 for part in stage1)
    for c in range(4):  # heterogeneous: odd clients train stage 1's shard again at stage 2
        assert (shard(c, 2) == stage1[c]) == (c % 2 == 1)
    # and it runs with Adapt-∞ on the clients: a shard seen again is not added twice to a client's pool
    cfg = fed_config("disco", True, clients=2, per_round=2, rounds_per_task=1, scenario="capability",
                     groups=[["successor", "colours"], ["again"]], heterogeneous=True)
    res = FederatedRun(root / "cap-run", three, cfg, {"base": str(base)}, say=lambda m: None).run()
    assert np.array(res["accuracy"]).shape == (3, 2)
    for c in range(2):  # every record a client was given is in its pool once (added, then kept or pruned)
        pool = PoolStore(root / f"cap-run/clients/c{c:03d}/pool")
        ids = [r["id"] for r in pool.rows]
        given = {json.loads(l)["id"] for s in (1, 2) for l in open(root / f"cap-run/clients/c{c:03d}/data/stage-{s}.jsonl")}
        assert len(ids) == len(set(ids)) and set(ids) == given
    # record ids repeated across tasks are refused up front (a pool keys records by id)
    clash = tasks + [type(tasks[0])("clash", tasks[0].train, tasks[0].test, images=tasks[0].images)]
    with pytest.raises(ValueError, match="unique id"):
        FederatedRun(root / "clash", clash, fed_config("fedavg", False), {"base": str(base)}).prepare()
    # a resumed folder with other settings is refused
    with pytest.raises(ValueError, match="another config"):
        FederatedRun(root / "cap-run", three, fed_config("fedavg", False), {"base": str(base)}).prepare()


def test_groups_landing_on_one_subspace_are_averaged_together():
    rank = 1
    glob = {"m.lora_A.weight": torch.zeros(2, 3), "m.lora_B.weight": torch.zeros(3, 2)}
    protos = Prototypes(2, 2)
    protos.add(0, torch.tensor([1.0, 0.0]), 1)
    protos.add(1, torch.tensor([0.0, 1.0]), 1)  # no free slot: every group goes to its nearest
    feats = [torch.tensor([1.0, 0.05]), torch.tensor([0.6, 0.4]), torch.tensor([1.0, -0.05])]
    vals = [1.0, 2.0, 4.0]
    replies = [{"state": {"m.lora_A.weight": torch.full((1, 3), v), "m.lora_B.weight": torch.full((3, 1), v)},
                "n": 1, "feature_sum": f, "feature_count": 1} for f, v in zip(feats, vals)]
    new, groups = disco_aggregate(glob, replies, protos, rank, 0.95)
    assert len(groups) >= 2 and all(g["slot"] == 0 for g in groups)  # separate groups, one slot
    assert torch.allclose(new["m.lora_A.weight"][0], torch.full((3,), 7.0 / 3))  # all three averaged, none lost
    assert torch.equal(new["m.lora_A.weight"][1], torch.zeros(3))


def test_flower_messages_carry_bfloat16_exactly():
    pytest.importorskip("flwr")
    from adaptinf_fast.federated.apps import _pack, _unpack

    arrays = {"a": torch.randn(3, 4).to(torch.bfloat16), "b": torch.randn(2, dtype=torch.float64)}
    meta, back = _unpack(_pack({"client": 1}, arrays))
    assert meta == {"client": 1} and all(back[k].dtype == v.dtype and torch.equal(back[k], v) for k, v in arrays.items())


def test_federated_command_runs_a_config_file(fed_setting, tmp_path):
    import yaml
    from conftest import write_stage_files

    from adaptinf_fast.cli import main

    root, tasks, base, data = fed_setting
    stages = write_stage_files(tmp_path, data, ("colours",), root / "tasks")
    cfg = {"out": str(tmp_path / "run"), "model": {"base": str(base), "device": "cpu"}, "stages": stages,
           "lora": {"r": 2, "alpha": 4}, "train": {"lr": 1e-3, "batch_size": 4}, "eval": {"max_new_tokens": 3},
           "federated": {"clients": 2, "per_round": 1, "rounds_per_task": 1, "aggregation": "fedavg", "experts": 1}}
    (tmp_path / "fed.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["federated", "--config", str(tmp_path / "fed.yaml"), "--engine", "local", "--no-progress"]) == 0
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert summary["aggregation"] == "fedavg" and len(summary["rounds"]) == 1
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**cfg, "federated": {"clients": 2, "per_round": 3}}))
    assert main(["federated", "--config", str(tmp_path / "bad.yaml"), "--engine", "local"]) == 2
