"""The lifelong loop (``LifelongRun``) and ``adaptinf-fast run --config``: resume after a crash
anywhere equals an uninterrupted run; bad configs are refused up front with every error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from adaptinf_fast import cli
from adaptinf_fast.data.demo_tasks import make_tasks, vocabulary, word_tokenizer
from adaptinf_fast.demo.model import tiny_llava
from adaptinf_fast.lifelong import run as run_module
from adaptinf_fast.lifelong.run import LifelongRun, LoraSettings, RunConfig, Task
from adaptinf_fast.lifelong.train import TrainConfig


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    root = tmp_path_factory.mktemp("lifelong")
    data = make_tasks(root / "tasks", n_train=16, n_test=6, n_describe=0)
    tok = word_tokenizer(vocabulary(data))
    base = root / "base"
    tiny_llava(tok, hidden=32, layers=1, vision_layers=1).save_pretrained(base)
    tok.save_pretrained(base)
    tasks = [Task(name, data[name]["train"], data[name]["test"], images=str(root / "tasks"))
             for name in ("colours", "successor")]
    cfg = RunConfig(k=3, budget=12, pool_budget=20, layers="all", out_dim=64, feature_batch_size=8,
                    lora=LoraSettings(r=4, alpha=8), train=TrainConfig(lr=1e-3, epochs=2, batch_size=4, save_every=1),
                    max_new_tokens=3)
    return root, data, tasks, cfg, base


def loader(base: Path):
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    return lambda: (LlavaForConditionalGeneration.from_pretrained(base), AutoTokenizer.from_pretrained(base))


def state(out: Path) -> dict[str, bytes]:
    """Everything a run leaves, less wall-clock times, plots and the training checkpoints (their
    pickles' bytes depend on object sharing; the adapters they end in are compared instead)."""
    files = {}
    for p in sorted(out.rglob("*")):
        if p.is_file() and p.suffix != ".png" and p.name not in ("timings.json", "summary.json", "train-state.pt"):
            data = p.read_bytes()
            if p.parent.name == "eval":
                doc = json.loads(data)
                doc.pop("seconds")
                data = json.dumps(doc).encode()
            files[str(p.relative_to(out))] = data
    return files


def test_kill_anywhere_then_resume_equals_uninterrupted(setting, monkeypatch):
    root, _, tasks, cfg, base = setting
    LifelongRun(root / "whole", tasks, cfg, loader(base), progress=False, say=lambda s: None).run()

    real_train, real_eval = run_module.train_lora, LifelongRun._evaluate
    crashes = {"train": 1, "eval": 1}

    def crashing_train(*args, **kwargs):  # dies after the first optimizer step of stage 2's training
        if crashes["train"] and kwargs["ckpt_dir"].name == "stage-002":
            crashes["train"] = 0
            kwargs["_stop_after_step"] = 1
        return real_train(*args, **kwargs)

    def crashing_eval(self, model, encoder, tests, t):  # dies before stage 1's evaluation is written
        if crashes["eval"] and t == 1:
            crashes["eval"] = 0
            raise KeyboardInterrupt("killed")
        return real_eval(self, model, encoder, tests, t)

    monkeypatch.setattr(run_module, "train_lora", crashing_train)
    monkeypatch.setattr(LifelongRun, "_evaluate", crashing_eval)
    out = root / "resumed"
    for _ in range(2):
        with pytest.raises(KeyboardInterrupt):
            LifelongRun(out, tasks, cfg, loader(base), progress=False, say=lambda s: None).run()
    assert (out / "train" / "stage-002" / "train-state.pt").exists() and not (out / "adapters" / "stage-002").exists()
    res = LifelongRun(out, tasks, cfg, loader(base), progress=False, say=lambda s: None).run()
    assert not any(crashes.values())
    assert state(out) == state(root / "whole")
    assert res["accuracy"] == json.loads((root / "whole" / "summary.json").read_text())["accuracy"]


def write_config(root: Path, data, base: Path, **extra) -> Path:
    for name in ("colours", "successor"):
        for split in ("train", "test"):
            (root / f"{name}-{split}.json").write_text(json.dumps(data[name][split]))
    stages = [{"name": n, "train": str(root / f"{n}-train.json"), "test": str(root / f"{n}-test.json"),
               "images": str(root / "tasks")} for n in ("colours", "successor")]
    stages[1]["budget"] = 10
    doc = {"out": str(root / "run-out"), "model": {"base": str(base)}, "lora": {"r": 4, "alpha": 8},
           "train": {"lr": 1e-3, "epochs": 1, "batch_size": 4}, "features": {"layers": "last", "out_dim": 32},
           "selection": {"k": 2, "budget": 8, "pool_budget": 18}, "eval": {"limit": 4, "max_new_tokens": 2},
           "stages": stages, **extra}
    import yaml

    path = root / "stages.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_run_command_from_a_yaml_config(setting, capsys):
    root, data, _, _, base = setting
    config = write_config(root, data, base)
    other = root / "other-run"  # a finished baseline run of the same tasks, made by hand
    other.mkdir()
    (other / "accuracy.json").write_text(json.dumps({"tasks": ["colours", "successor"], "accuracy": [[0.5, 0.5]] * 3}))
    assert cli.main(["run", "--config", str(config), "--no-progress", "--baseline", f"hand={other}"]) == 0
    out = root / "run-out"
    summary = json.loads((out / "summary.json").read_text())
    final = summary["accuracy"][-1]
    assert summary["relative_gain"]["hand"] == pytest.approx(100 * (final[0] + final[1]) / 2 / 0.5)
    assert json.loads((out / "accuracy.json").read_text())["relative_gain"] == summary["relative_gain"]
    assert summary["tasks"] == ["colours", "successor"] and len(summary["accuracy"]) == 3
    assert [s["selected"] for s in summary["stages"]] == [8, 10]  # the per-stage budget override
    assert summary["stages"][1]["pool_after"] == 18
    assert "score after each stage" in capsys.readouterr().out
    assert json.loads((out / "eval" / "stage-000.json").read_text())["scores"].keys() == {"colours", "successor"}
    assert len(json.loads((out / "eval" / "stage-002.json").read_text())["examples"]["colours"]) == 4  # eval limit


def test_run_config_errors_are_all_reported_before_any_work(setting, capsys):
    root, data, _, _, base = setting
    bad = root / "bad"
    bad.mkdir()
    config = write_config(bad, data, root / "no-such-model", selection={"k": 0, "budgett": 3})
    doc = config.read_text().replace("successor-test.json", "missing-test.json")
    config.write_text(doc)
    assert cli.main(["run", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    for expected in ("model.base", "budgett", "missing-test.json does not exist"):
        assert expected in err, err
    assert not (bad / "run-out").exists()


def test_causal_lm_with_hf_datasets_input(setting, tmp_path):
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM

    _, data, _, cfg, _ = setting
    tok = word_tokenizer(vocabulary(data))
    lm_cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=tok.pad_token_id,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    recs = data["successor"]
    later = [{**r, "id": r["id"] + "-again"} for r in recs["train"]]
    tasks = [Task("successor", Dataset.from_list(recs["train"]), Dataset.from_list(recs["test"])),
             Task("again", later, recs["test"])]
    torch.manual_seed(0)
    model = LlamaForCausalLM(lm_cfg)
    res = LifelongRun(tmp_path, tasks, cfg, lambda: (model, tok), progress=False, say=lambda s: None).run()
    assert len(res["accuracy"]) == 3 and [s["added"] for s in res["stages"]] == [16, 16]
    targets = json.loads((tmp_path / "adapters" / "stage-002" / "adapter_config.json").read_text())["target_modules"]
    assert set(targets) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
