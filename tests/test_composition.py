"""Selection you can see: what each stage's clusters hold by source, what it selected and pruned by
source, K chosen by a stated rule, the layer choices side by side."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from adaptinf_fast.lifelong.choose_k import choose_k, pick
from adaptinf_fast.lifelong.composition import cluster_composition, source_shares


def _nmi_by_hand(labels, sources) -> float:
    """Normalised mutual information (arithmetic mean of the entropies), from the definition."""
    n = len(labels)
    pairs = {}
    for c, s in zip(labels, sources):
        pairs[(c, s)] = pairs.get((c, s), 0) + 1
    pc = {c: labels.count(c) / n for c in set(labels)}
    ps = {s: sources.count(s) / n for s in set(sources)}
    mi = sum(v / n * math.log((v / n) / (pc[c] * ps[s])) for (c, s), v in pairs.items())
    h = lambda p: -sum(q * math.log(q) for q in p.values())  # noqa: E731
    return mi / ((h(pc) + h(ps)) / 2)


def test_the_composition_table_sums_to_the_pool_and_scores_agreement_as_defined():
    labels = [0, 0, 0, 1, 1, 2, 2, 2, 2, 3]  # cluster 3 holds one sample; K = 5 leaves cluster 4 empty
    sources = ["a", "a", "b", "b", "b", "c", "c", "a", "c", "a"]
    comp = cluster_composition(labels, sources, k=5)
    counts = np.array(comp["counts"])
    assert comp["sources"] == ["a", "b", "c"] and counts.shape == (5, 3)
    assert counts.sum() == len(labels) and comp["sizes"] == [3, 2, 4, 1, 0]
    assert counts.sum(0).tolist() == [sources.count(s) for s in "abc"]
    assert comp["majority"] == ["a", "b", "c", "a", None] and comp["purity"] == [round(2 / 3, 4), 1.0, 0.75, 1.0, None]
    assert comp["overall"]["purity"] == pytest.approx((2 + 2 + 3 + 1) / 10)
    assert comp["overall"]["nmi"] == pytest.approx(_nmi_by_hand(labels, sources), abs=1e-4)
    same = cluster_composition([0, 0, 1, 1], ["x", "x", "y", "y"])
    assert same["overall"] == {"purity": 1.0, "nmi": 1.0, "ari": 1.0}
    mixed = cluster_composition([0, 0, 0, 0], ["x", "x", "y", "y"])
    assert mixed["overall"]["purity"] == 0.5 and mixed["overall"]["nmi"] == 0.0


def test_source_shares():
    shares = source_shares(["a"] * 6 + ["b"] * 4, ["a", "b", "b", "b"])
    assert shares == {"a": {"pool": 6, "picked": 1, "pool_share": 0.6, "picked_share": 0.25},
                      "b": {"pool": 4, "picked": 3, "pool_share": 0.4, "picked_share": 0.75}}


def test_k_auto_finds_the_planted_k_on_separated_blobs():
    rng = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(6, 32, generator=rng), dim=1) * 10
    x = centres.repeat_interleave(80, 0) + torch.randn(480, 32, generator=rng)
    sources = [f"task{i // 160}" for i in range(480)]  # three sources of two blobs each
    report = choose_k(x, seed=1, sources=sources)
    assert report["chosen"] == 6 and report["sample"] == 480
    row = next(r for r in report["rows"] if r["k"] == 6)
    assert row["purity"] == 1.0 and row["silhouette"] == max(r["silhouette"] for r in report["rows"])
    assert choose_k(x, [2, 3, 6, 9], seed=1)["chosen"] == 6
    with pytest.raises(ValueError, match="each must be in 2"):
        choose_k(x, [1, 4])
    # the rule: within 0.02 of the best silhouette, the smaller K
    assert pick([{"k": 4, "silhouette": 0.50}, {"k": 8, "silhouette": 0.515}, {"k": 2, "silhouette": 0.3}]) == 4


def test_a_stage_records_and_shows_composition_selection_and_pruning_by_source(tmp_path, capsys):
    from test_lifelong import make_data, stage_cfgs

    from adaptinf_fast import cli
    from adaptinf_fast.lifelong import run_stage
    from adaptinf_fast.lifelong.pool import PoolStore
    from adaptinf_fast.lifelong.plots import write_plots

    make_data(tmp_path)
    for cfg in stage_cfgs(tmp_path):
        rec = run_stage(tmp_path / "pool", cfg, progress=False)
    pool = PoolStore(tmp_path / "pool")
    comp = json.loads((pool.stage_dir(2) / "cluster.json").read_text())
    manifest = {r["id"]: r for r in pool.rows}
    stage2_ids = json.loads((pool.stage_dir(2) / "features.json").read_text())["ids"]
    assert sum(comp["sizes"]) == len(stage2_ids)
    assert dict(zip(comp["sources"], np.array(comp["counts"]).sum(0).tolist())) == {
        s: sum(manifest[i]["source"] == s for i in stage2_ids) for s in comp["sources"]}
    selected = json.loads((pool.stage_dir(2) / "selection.json").read_text())["ids"]
    assert {s: v["picked"] for s, v in rec["select"]["by_source"].items()} == {
        s: sum(manifest[i]["source"] == s for i in selected) for s in ("taskA", "taskB")}
    assert sum(v["picked"] for v in rec["prune"]["by_source"].values()) == rec["prune"]["pruned"]
    assert cli.main(["status", "--pool", str(pool.root)]) == 0
    out = capsys.readouterr().out
    assert "clusters vs sources: purity" in out and "selected by source: taskA" in out and "memory estimate" in out
    names = {p.name for p in write_plots(pool.root)}
    assert {"stage-002-cluster-sources.png", "stage-002-source-shares.png"} <= names


def test_the_cluster_command_takes_k_auto_and_a_list(tmp_path, capsys):
    from test_lifelong import make_data

    from adaptinf_fast import cli

    make_data(tmp_path)
    pool = str(tmp_path / "pool")
    assert cli.main(["add", "--pool", pool, "--data", str(tmp_path / "taskA.jsonl"), "--source", "taskA"]) == 0
    assert cli.main(["features", "--pool", pool, "--from", str(tmp_path / "features.npz")]) == 0
    capsys.readouterr()
    assert cli.main(["cluster", "--pool", pool, "--k", "2,4,6"]) == 0
    out = capsys.readouterr().out
    rec = json.loads(out.strip().splitlines()[-1])["cluster"]
    assert rec["k"] == 4 and [r["k"] for r in rec["k_report"]["rows"]] == [2, 4, 6]  # the data holds 4 centres
    assert "<- chosen" in out and "what the clusters hold" in out
    auto = str(tmp_path / "pool-auto")  # `--k auto`: the default candidates, the same pick
    assert cli.main(["add", "--pool", auto, "--data", str(tmp_path / "taskA.jsonl"), "--source", "taskA"]) == 0
    assert cli.main(["features", "--pool", auto, "--from", str(tmp_path / "features.npz")]) == 0
    capsys.readouterr()
    assert cli.main(["cluster", "--pool", auto, "--k", "auto"]) == 0
    rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["cluster"]
    ks = [r["k"] for r in rec["k_report"]["rows"]]
    assert rec["k"] == 4 and len(ks) > 3 and ks[0] == 2 and 4 in ks
    with pytest.raises(SystemExit):  # argparse's usage error
        cli.main(["cluster", "--pool", pool, "--k", "many"])
    assert "expected an int, 'auto' or a list" in capsys.readouterr().err


def test_layer_choices_side_by_side_on_a_sample_of_the_pool(tmp_path, capsys):
    """`features --compare-layers 'last;all;0'`: features of a sample under each choice, clustered at
    one K; the report counts the featurised parameters and is written to layers.json."""
    from transformers import LlamaForCausalLM

    from adaptinf_fast import cli
    from adaptinf_fast.lifelong.pool import PoolStore
    from tiny_models import llama_config, lora, word_tokenizer

    torch.manual_seed(0)
    LlamaForCausalLM(llama_config()).save_pretrained(tmp_path / "base")
    lora(LlamaForCausalLM.from_pretrained(tmp_path / "base")).save_pretrained(tmp_path / "adapter")
    word_tokenizer().save_pretrained(tmp_path / "adapter")
    pool = str(tmp_path / "pool")
    recs = [{"id": f"{kind}{i}", "conversations": [{"from": "human", "value": f"what is the {kind} ?"},
                                                     {"from": "gpt", "value": answers[i % 3]}]}
            for kind, answers in (("colour", ["red", "green", "blue"]), ("number", ["one", "two", "three"]))
            for i in range(9)]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert cli.main(["add", "--pool", pool, "--data", str(tmp_path / "data.jsonl"), "--source", "mixed"]) == 0
    capsys.readouterr()
    assert cli.main(["features", "--pool", pool, "--model", str(tmp_path / "adapter"), "--compare-layers", "last;all;0",
                     "--k", "2", "--sample", "12", "--out-dim", "32", "--batch-size", "6"]) == 0
    doc = json.loads((PoolStore(pool).stage_dir(1) / "layers.json").read_text())
    assert doc["k"] == 2 and doc["sample"] == 12 and [r["layers"] for r in doc["rows"]] == ["last", "all", "0"]
    params = {r["layers"]: r["parameters"] for r in doc["rows"]}
    assert params["all"] > params["last"] > 0 and params["all"] > params["0"] > 0
    assert all(-1 <= r["silhouette"] <= 1 and r["purity"] == 1.0 for r in doc["rows"])  # one source
    assert "silhouette" in capsys.readouterr().out
    assert not PoolStore(pool).state.finished(1, "features")  # a report, not the step
