"""Model-side strategies on the lifelong loop (lifelong/strategies/): merging (average, TIES,
CoPA) and HiDe runs finish two stages, resume after a kill to the same files and deploy what
their definitions say; HiDe trains one expert per stage, fuses the general layers, routes the
specific one, and reports routing accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from adaptinf_fast.lifelong import run as run_module
from adaptinf_fast.lifelong.config import RunConfig
from adaptinf_fast.lifelong.run import LifelongRun
from adaptinf_fast.ops.merge import lora_pairs, merge_lora
from test_lifelong_run import loader, state, two_tasks


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    root = tmp_path_factory.mktemp("strategies")
    _, tasks, base = two_tasks(root, layers=2)
    return root, tasks, base


def config(strategy: str) -> RunConfig:
    return RunConfig.model_validate({
        "strategy": strategy, "selection": {"k": 3, "budget": 12, "pool_budget": 20},
        "features": {"layers": "last", "out_dim": 32, "batch_size": 8}, "lora": {"r": 4, "alpha": 8},
        "train": {"lr": 1e-3, "epochs": 1, "batch_size": 4}, "eval": {"max_new_tokens": 3, "batch_size": 4},
        "hide": {"probe": 8}, "merge": {"density": 0.5}})


def adapters(out: Path, *stages: tuple[int, str]):
    from peft.utils import load_peft_weights

    return [load_peft_weights(str(out / "pool" / "stages" / f"stage-{t:03d}" / d)) for t, d in stages]


def check_definition(strategy: str, whole: Path, res: dict) -> None:
    stage2 = whole / "pool" / "stages" / "stage-002"
    if strategy.startswith("merge:"):
        [a1, a2, deployed] = adapters(whole, (1, "adapter"), (2, "adapter"), (2, "deployed"))
        want = merge_lora([a1, a2], 2.0, strategy.split(":")[1], density=0.5)
        for bk, ak in lora_pairs(a1).values():
            torch.testing.assert_close(deployed[bk], want[bk])
            torch.testing.assert_close(deployed[ak], want[ak])
        return
    [a0, a1, a2] = adapters(whole, (0, "adapter"), (1, "adapter"), (2, "adapter"))
    info = json.loads((stage2 / "hide.json").read_text())
    assert info["experts"] == 2 and info["expert_rank"] == 4 and info["specific_layers"] == [1] and len(info["cka"]) == 2
    for k in a0:  # one adapter of rank 2 x 4; stage 1 trained expert 1 only, stage 2 expert 2 only
        expert = (lambda a, e: a[k][4 * e : 4 * e + 4]) if ".lora_A." in k else (lambda a, e: a[k][:, 4 * e : 4 * e + 4])
        assert torch.equal(expert(a1, 1), expert(a0, 1)) and torch.equal(expert(a2, 0), expert(a1, 0))
        assert not torch.equal(expert(a1, 0), expert(a0, 0))
        if ".lora_B." in k:
            assert torch.equal(a0[k], torch.zeros_like(a0[k]))  # every expert starts with B = 0
    assert set(res["routing"][2]) == {"colours", "successor"} and all(0 <= v <= 1 for v in res["routing"][2].values())
    assert res["routing"][1]["colours"] == 1.0  # one task: every prompt to its expert


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["merge:average", "merge:ties", "merge:copa", "hide"])
def test_strategy_runs_resumes_after_a_kill_and_deploys_its_definition(setting, strategy, monkeypatch):
    root, tasks, base = setting
    cfg = config(strategy)
    whole = root / f"whole-{strategy.replace(':', '-')}"
    res = LifelongRun(whole, tasks, cfg, loader(base), progress=False, say=lambda s: None).run()
    assert res["strategy"] == strategy and len(res["accuracy"]) == 3
    check_definition(strategy, whole, res)

    real_eval = run_module.evaluate
    out = root / f"resumed-{strategy.replace(':', '-')}"
    crashed = []
    marker = "deployed" if strategy.startswith("merge:") else "router.pt"

    def crashing_eval(*args, **kwargs):  # dies in stage 2's evaluation, after its model was deployed
        if not crashed and (out / "pool" / "stages" / "stage-002" / marker).exists():
            crashed.append(1)
            raise KeyboardInterrupt("killed")
        return real_eval(*args, **kwargs)

    monkeypatch.setattr(run_module, "evaluate", crashing_eval)
    with pytest.raises(KeyboardInterrupt):
        LifelongRun(out, tasks, cfg, loader(base), progress=False, say=lambda s: None).run()
    again = LifelongRun(out, tasks, cfg, loader(base), progress=False, say=lambda s: None).run()
    assert crashed and state(out) == state(whole)
    assert again["accuracy"] == res["accuracy"]


@pytest.mark.slow
def test_merge_command_reapplies_a_merge_to_a_finished_run(setting, capsys):
    from adaptinf_fast import cli

    root, tasks, base = setting
    run = root / "for-reapply"
    res = LifelongRun(run, tasks, config("merge:copa"), loader(base), progress=False, say=lambda s: None,
                      model_info={"base": str(base)}).run()
    assert cli.main(["merge", str(run), "--method", "copa", "--no-progress"]) == 0
    again = json.loads((run / "merge-copa" / "summary.json").read_text())
    assert again["accuracy"] == res["accuracy"]  # the run's own merges, rebuilt from its stage adapters
    assert again["merge"]["keep"] == 0.2 and "stage 2" in capsys.readouterr().out
    assert cli.main(["merge", str(run), "--method", "ties", "--density", "0.5", "--base", str(base),
                     "--no-progress"]) == 0
    assert (run / "merge-ties" / "accuracy.json").exists()
    capsys.readouterr()
    with pytest.raises(SystemExit):
        cli.main(["merge", str(run), "--method", "fisher"])


def test_unknown_strategies_and_weight_decay_under_hide_are_refused():
    with pytest.raises(ValueError, match="expected one of"):
        config("merge:fisher")
    with pytest.raises(ValueError, match="weight decay would shrink the other experts"):
        RunConfig.model_validate({"strategy": "hide", "train": {"weight_decay": 0.01}})
    with pytest.raises(ValueError, match="expected a local CLIP model folder"):
        RunConfig.model_validate({"strategy": "hide", "router": {"clip": "/nonexistent"}})
