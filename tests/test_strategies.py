"""Model-side strategies on the lifelong loop (lifelong/strategies.py): merging and HiDe runs finish
two stages, resume after a kill to the same files, deploy what their definitions say, and HiDe
routes the demo tasks' prompts to their own experts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from adaptinf_fast.lifelong import run as run_module
from adaptinf_fast.lifelong import strategies
from adaptinf_fast.lifelong.config import RunConfig
from adaptinf_fast.lifelong.run import LifelongRun
from adaptinf_fast.ops.merge import delta_of, lora_pairs, merge_lora
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


def adapters(out: Path, *stages: int):
    from peft.utils import load_peft_weights

    return [load_peft_weights(str(out / "pool" / "stages" / f"stage-{t:03d}" / d)) for t, d in stages]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["merge:average", "merge:ties", "hide"])
def test_strategy_runs_resumes_after_a_kill_and_deploys_its_definition(setting, strategy, monkeypatch):
    root, tasks, base = setting
    cfg = config(strategy)
    whole = root / f"whole-{strategy.replace(':', '-')}"
    res = LifelongRun(whole, tasks, cfg, loader(base), progress=False, say=lambda s: None).run()
    assert res["strategy"] == strategy and len(res["accuracy"]) == 3
    stage2 = whole / "pool" / "stages" / "stage-002"
    [a1, a2, deployed] = adapters(whole, (1, "adapter"), (2, "adapter"), (2, "deployed"))
    if strategy.startswith("merge:"):
        want = merge_lora([a1, a2], 2.0, strategy.split(":")[1], density=0.5)
        for p in lora_pairs(a1):
            torch.testing.assert_close(delta_of(deployed, p, 2.0), delta_of(want, p, 2.0))
    else:
        info = json.loads((stage2 / "hide.json").read_text())
        assert info["layers"] == 2 and len(info["cka"]) == 2 and 0 <= info["split"] <= 1
        for k in deployed:  # layers from the split up: task 2's; below: the mean of both tasks' updates
            if (strategies.layer_of(k) or 0) >= info["split"]:
                assert torch.equal(deployed[k], a2[k])
        assert res["routing"][2] == {"colours": 1.0, "successor": 1.0}  # separable tasks: every prompt to its own expert

    real_eval = run_module.evaluate
    out = root / f"resumed-{strategy.replace(':', '-')}"
    crashed = []

    def crashing_eval(*args, **kwargs):  # dies in stage 2's evaluation, after its model was deployed
        if not crashed and (out / "pool" / "stages" / "stage-002" / "deployed").exists():
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
    res = LifelongRun(run, tasks, config("merge:ties"), loader(base), progress=False, say=lambda s: None,
                      model_info={"base": str(base)}).run()
    assert cli.main(["merge", str(run), "--method", "ties", "--density", "0.5", "--no-progress"]) == 0
    again = json.loads((run / "merge-ties" / "summary.json").read_text())
    assert again["accuracy"] == res["accuracy"]  # the run's own merges, rebuilt from its stage adapters
    assert "stage 2" in capsys.readouterr().out
    assert cli.main(["merge", str(run), "--method", "average", "--base", str(base), "--no-progress"]) == 0
    assert (run / "merge-average" / "accuracy.json").exists()
    capsys.readouterr()
    assert cli.main(["merge", str(run), "--method", "copa"]) == 2
    assert "CoPA-Merging) is not implemented" in capsys.readouterr().err


def test_copa_and_unknown_strategies_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="CoPA-Merging.* not implemented"):
        config("merge:copa")
    with pytest.raises(ValueError, match="expected one of"):
        config("merge:fisher")


def test_hide_split_keeps_the_trailing_dissimilar_layers():
    assert strategies.hide_split([0.99, 0.95, 0.5, 0.4], 0.9) == 2
    assert strategies.hide_split([0.99, 0.95, 0.97], 0.9) == 2  # at least the top layer
    assert strategies.hide_split([0.2, 0.3], 0.9) == 0


def test_routing_takes_the_nearest_prototype():
    protos = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])  # centred on (0, 1/3)
    feats = torch.tensor([[0.9, 0.1], [0.1, 2.0], [-3.0, 0.5]])
    assert strategies.route(feats, protos).tolist() == [0, 1, 2]
    shared = torch.tensor([[10.0, 1.0], [10.0, -1.0]])  # a large common part: the sign of the difference decides
    assert strategies.route(torch.tensor([[10.0, 0.2], [10.0, -0.3]]), shared).tolist() == [0, 1]
    assert strategies.route(feats, protos[:1]).tolist() == [0, 0, 0]  # one task: one expert


def test_routing_features_are_the_prompt_text_and_the_image(setting):
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    from adaptinf_fast.data.encoder import Encoder

    root, tasks, base = setting
    model = LlavaForConditionalGeneration.from_pretrained(base)
    tok = AutoTokenizer.from_pretrained(base)
    enc = Encoder.for_model(model, tok, image_root=root / "tasks")
    recs = tasks[0].train[:2]
    no_image = {"id": "t", "conversations": [{"from": "human", "value": "what colour"}, {"from": "gpt", "value": "red"}]}
    f = strategies.prompt_features(model, enc, [*recs, no_image])
    h = model.config.text_config.hidden_size
    assert f.shape == (3, 2 * h)
    torch.testing.assert_close(f[:, :h].norm(dim=1), torch.ones(3))  # normalised text part
    torch.testing.assert_close(f[:2, h:].norm(dim=1), torch.ones(2))  # normalised image part
    assert torch.equal(f[2, h:], torch.zeros(h)) and not torch.allclose(f[0, h:], f[1, h:])
    assert strategies.prompt_features(model, enc, [no_image]).shape == (1, 2 * h)  # one width for every task
