"""The built-in lifelong demo, two stages at a tiny size: real learning, numbers from the run, resumable."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from adaptinf_fast import cli

pytestmark = pytest.mark.slow  # the whole demo, twice: run by CI, left out by `-m "not slow"`


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    argv = ["demo", "--out", str(out), "--tasks", "colours,successor", "--n-train", "48", "--n-test", "24",
            "--pretrain-epochs", "25", "--epochs", "30", "--budget", "64", "--pool-budget", "40", "--k", "4",
            "--out-dim", "256", "--compare", "random", "--no-progress"]
    return out, argv


def test_two_stage_demo_learns_and_reports_its_own_numbers(demo, capsys):
    out, argv = demo
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["runs"]) == {"adaptinf", "random"}
    for method, folder in (("adaptinf", "adaptinf"), ("random", "baseline-random")):
        run = json.loads((out / folder / "summary.json").read_text())
        rows = [json.loads((out / folder / "pool" / "stages" / f"stage-{t:03d}" / "eval.json").read_text())["scores"]
                for t in range(3)]
        matrix = [[r[name] for name in run["tasks"]] for r in rows]
        assert run["accuracy"] == matrix == summary["runs"][method]["accuracy"]  # the matrix is the evaluations'
        for t, name in enumerate(run["tasks"], 1):  # learning is real: each task clearly above chance after its stage
            assert matrix[t][t - 1] >= run["chance"][name] + 0.25, (method, name, matrix, run["chance"])
        for row in matrix:  # the printed matrix shows these very numbers
            assert "".join(f"{v:>12.2f}" for v in row) in printed
        assert (out / folder / "accuracy.png").stat().st_size > 0
    stages = json.loads((out / "adaptinf" / "summary.json").read_text())["stages"]
    assert [s["added"] for s in stages] == [48, 48]
    assert all(s["pool_after"] == s["pool"] - s["pruned"] == min(40, s["pool"]) for s in stages)
    assert all(s["trained_on"] == s["selected"] == min(64, s["pool"]) for s in stages)
    rand_stages = json.loads((out / "baseline-random" / "summary.json").read_text())["stages"]
    assert [s["pool_after"] for s in rand_stages] == [48, 96]  # the baseline never prunes
    rand = json.loads((out / "baseline-random" / "pool" / "stages" / "stage-002" / "record.json").read_text())
    assert "skipped" in rand["features"] and rand["select"]["selected"] == 64
    assert list((out / "adaptinf" / "plots").glob("*.png"))
    assert summary["runs"]["adaptinf"]["trained_samples"] == summary["runs"]["random"]["trained_samples"] == 48 + 64


def test_rerun_resumes_everything_without_work(demo, capsys):
    out, argv = demo
    before = json.loads((out / "summary.json").read_text())
    final = out / "adaptinf" / "pool" / "stages" / "stage-002" / "adapter" / "adapter_model.safetensors"
    adapter = final.read_bytes()
    written = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and (
        p.name == "eval.json" or p.parent.name == "adapter" or p.name in ("train-state.pt", "features.npy"))}
    assert len(written) > 20
    assert cli.main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in written} == written  # nothing trained, featurised or evaluated again
    after = json.loads((out / "summary.json").read_text())
    assert "using the pre-trained base" in capsys.readouterr().out
    assert final.read_bytes() == adapter
    for method in before["runs"]:
        np.testing.assert_array_equal(before["runs"][method]["accuracy"], after["runs"][method]["accuracy"])


def test_demo_rejects_bad_arguments(tmp_path, capsys):
    assert cli.main(["demo", "--out", str(tmp_path), "--tasks", "colours,poetry"]) == 2
    assert "tasks must be a non-empty subset" in capsys.readouterr().err
    assert cli.main(["demo", "--out", str(tmp_path), "--compare", "random,oracle"]) == 2
    assert "--compare takes" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("java") is None, reason="the caption metric's PTB tokenizer and METEOR run on Java")
def test_a_multi_image_task_and_a_caption_task_run_in_the_demo(tmp_path):
    pytest.importorskip("pycocoevalcap")
    out = tmp_path / "extra"
    assert cli.main(["demo", "--tasks", "pairs,captions", "--n-train", "24", "--n-test", "8", "--pretrain-epochs", "1",
                     "--epochs", "1", "--budget", "16", "--pool-budget", "20", "--k", "2", "--out", str(out),
                     "--no-progress", "--device", "cpu"]) == 0
    run = json.loads((out / "adaptinf" / "summary.json").read_text())
    assert run["task_metrics"] == {"pairs": "exact_match", "captions": "caption"}
    stage2 = json.loads((out / "adaptinf" / "pool" / "stages" / "stage-002" / "eval.json").read_text())
    parts = stage2["details"]["captions"]
    assert {"Bleu_1", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "mean"} <= set(parts)
    assert stage2["scores"]["captions"] == pytest.approx(parts["mean"])
    records = [json.loads(line) for line in (out / "adaptinf" / "data" / "pairs-train.jsonl").read_text().splitlines()]
    assert all(len(r["image"]) == 2 for r in records)


def test_copa_hide_disco_and_modalprompt_with_the_clip_router_run_in_the_demo(tmp_path):
    """`--compare merge:copa,hide,disco,modalprompt` end to end: CoPA merges after every stage; HiDe,
    DISCO and ModalPrompt route with the tiny CLIP the demo trains (its folder recorded), routing or
    prompt-selection accuracy per task in [0, 1] after each stage."""
    out = tmp_path / "strategies"
    assert cli.main(["demo", "--tasks", "colours,successor", "--n-train", "16", "--n-test", "8", "--pretrain-epochs",
                     "1", "--epochs", "1", "--budget", "12", "--pool-budget", "20", "--k", "2", "--out-dim", "64",
                     "--compare", "merge:copa,hide,disco,modalprompt", "--out", str(out), "--no-progress",
                     "--device", "cpu"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["runs"]) == {"adaptinf", "merge:copa", "hide", "disco", "modalprompt"}
    copa = json.loads((out / "strategy-merge-copa" / "summary.json").read_text())
    assert copa["strategy"] == "merge:copa" and len(copa["accuracy"]) == 3
    for name in ("hide", "disco", "modalprompt"):
        run = json.loads((out / f"strategy-{name}" / "summary.json").read_text())
        assert run["strategy"] == name and set(run["routing"]) == {"1", "2"}, name  # after each stage
        assert set(run["routing"]["1"]) == {"colours"} and set(run["routing"]["2"]) == {"colours", "successor"}
        assert all(0.0 <= v <= 1.0 for v in run["routing"]["2"].values())
        record = json.loads((out / f"strategy-{name}" / "pool" / "stages" / "stage-002" / f"{name}.json").read_text())
        assert record["router"]["clip"] == str(out / "clip") and (out / "clip" / "config.json").exists()


def test_seeds_run_independently_resume_and_report_mean_and_std(tmp_path, capsys):
    out = tmp_path / "seeds"
    argv = ["demo", "--tasks", "colours,successor", "--n-train", "16", "--n-test", "8", "--pretrain-epochs", "1",
            "--epochs", "1", "--budget", "12", "--pool-budget", "20", "--k", "2", "--out-dim", "64", "--compare", "random",
            "--seeds", "2", "--seed", "3", "--out", str(out), "--no-progress", "--device", "cpu"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == [3, 4]
    mfn = []
    for seed in (3, 4):  # each seed is a whole demo of its own, with its own data and pre-trained base
        one = json.loads((out / f"seed-{seed}" / "summary.json").read_text())
        assert one["config"]["seed"] == seed and (out / f"seed-{seed}" / "base" / "config.json").exists()
        assert summary["per_seed"][str(seed)] == one["runs"]
        mfn.append(one["runs"]["adaptinf"]["MFN"])
    agg = summary["runs"]["adaptinf"]["MFN"]
    assert agg["values"] == mfn and agg["mean"] == pytest.approx(np.mean(mfn)) and agg["std"] == pytest.approx(np.std(mfn, ddof=1))
    assert "random" in summary["runs"]["adaptinf"]["relative_gain"]  # (this tiny run may score 0: NaN gains)
    assert "over 2 seeds (3, 4): mean ± std" in printed and "relative gain adaptinf vs random" in printed
    assert "selected by source" in printed  # the replay report of every run
    evals = {p: p.stat().st_mtime_ns for p in out.rglob("eval.json")}
    assert cli.main(argv) == 0  # resumes: every seed's runs are done, nothing is evaluated again
    assert {p: p.stat().st_mtime_ns for p in evals} == evals


def test_the_imbalanced_scenario_ends_with_a_large_redundant_stage(tmp_path, capsys):
    out = tmp_path / "imbalanced"
    assert cli.main(["demo", "--scenario", "imbalanced", "--n-train", "8", "--n-test", "4", "--pretrain-epochs", "1",
                     "--epochs", "1", "--budget", "6", "--pool-budget", "20", "--out-dim", "64", "--out", str(out),
                     "--no-progress", "--device", "cpu"]) == 0
    run = json.loads((out / "adaptinf" / "summary.json").read_text())
    assert run["tasks"] == ["digits", "colours", "counting", "rephrased"]
    assert [s["added"] for s in run["stages"]] == [8, 8, 8, 48]  # 16 questions in three phrasings
    assert "what the clusters of stage 4 hold, by task" in capsys.readouterr().out


def test_over_seeds_gives_mean_std_and_a_t_interval_of_the_gain():
    from adaptinf_fast.demo.lifelong import DemoConfig, over_seeds

    def run(mfn, gain):
        return {"tasks": ["a"], "runs": {
            "adaptinf": {"MFN": mfn, "MFT": 0.5, "trained_samples": 10, "final_pool": 5, "seconds": 1.0,
                         "relative_gain": {"random": gain}},
            "random": {"MFN": 0.4, "MFT": 0.5, "trained_samples": 10, "final_pool": 9, "seconds": 1.0,
                       "relative_gain": {"adaptinf": 100.0}}}}

    summary = over_seeds({0: run(0.5, 110.0), 1: run(0.6, 120.0), 2: run(0.7, 130.0)}, DemoConfig())
    mfn = summary["runs"]["adaptinf"]["MFN"]
    assert mfn["mean"] == pytest.approx(0.6) and mfn["std"] == pytest.approx(0.1) and mfn["values"] == [0.5, 0.6, 0.7]
    gain = summary["runs"]["adaptinf"]["relative_gain"]["random"]
    half = 4.302652729911275 * 10.0 / np.sqrt(3)  # t(0.975, 2) * s / sqrt(n)
    assert gain["interval95"] == pytest.approx([120 - half, 120 + half])
    assert gain["excludes_100"] is False  # 120 ± 24.8 reaches below 100
    assert summary["runs"]["random"]["relative_gain"]["adaptinf"]["excludes_100"] is False  # zero spread: [100, 100]
