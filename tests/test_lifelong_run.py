"""The lifelong loop (``LifelongRun``) and ``adaptinf-fast run --config``: resume after a crash
anywhere equals an uninterrupted run; bad configs are refused up front with every error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from adaptinf_fast import cli
from adaptinf_fast.data.demo_tasks import make_tasks, vocabulary, word_tokenizer
from adaptinf_fast.demo.model import tiny_llava
from adaptinf_fast.lifelong import run as run_module
from adaptinf_fast.lifelong.config import RunConfig
from adaptinf_fast.lifelong.run import LifelongRun, Task
from conftest import write_stage_files


def two_tasks(root: Path, layers: int = 1):
    """(task data, the colours and successor Tasks, a saved tiny LLaVA base with ``layers`` layers)."""
    data = make_tasks(root / "tasks", n_train=16, n_test=6, n_describe=0)
    tok = word_tokenizer(vocabulary(data))
    base = root / "base"
    tiny_llava(tok, hidden=32, layers=layers, vision_layers=1).save_pretrained(base)
    tok.save_pretrained(base)
    tasks = [Task(name, data[name]["train"], data[name]["test"], images=str(root / "tasks"))
             for name in ("colours", "successor")]
    return data, tasks, base


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    root = tmp_path_factory.mktemp("lifelong")
    data, tasks, base = two_tasks(root)
    cfg = RunConfig.model_validate({
        "selection": {"k": 3, "budget": 12, "pool_budget": 20}, "features": {"layers": "all", "out_dim": 64, "batch_size": 8},
        "lora": {"r": 4, "alpha": 8}, "train": {"lr": 1e-3, "epochs": 2, "batch_size": 4, "save_every": 1},
        "eval": {"max_new_tokens": 3, "batch_size": 4}})
    return root, data, tasks, cfg, base


def loader(base: Path):
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    return lambda: (LlavaForConditionalGeneration.from_pretrained(base), AutoTokenizer.from_pretrained(base))


def state(out: Path) -> dict[str, bytes]:
    """Everything a run leaves, less wall-clock times, plots, TensorBoard logs and the training
    checkpoints (their pickles' bytes depend on object sharing; the adapters they end in are
    compared instead)."""
    files = {}
    for p in sorted(out.rglob("*")):
        if p.is_file() and "logs" not in p.relative_to(out).parts and p.suffix != ".png" and p.name not in ("timings.json", "summary.json", "train-state.pt", ".lock"):
            data = p.read_bytes()
            if p.name == "eval.json":
                doc = json.loads(data)
                doc.pop("seconds")
                data = json.dumps(doc).encode()
            files[str(p.relative_to(out))] = data
    return files


def test_kill_anywhere_then_resume_equals_uninterrupted(setting, monkeypatch):
    root, _, tasks, cfg, base = setting
    LifelongRun(root / "whole", tasks, cfg, loader(base), progress=False, say=lambda s: None).run()

    real_train, real_eval = run_module.train_lora, run_module.evaluate
    crashes = {"train": 1, "eval": 1}
    evals = []

    def crashing_train(*args, **kwargs):  # dies after the first optimizer step of stage 2's training
        if crashes["train"] and kwargs["ckpt_dir"].parent.name == "stage-002":
            crashes["train"] = 0
            kwargs["_stop_after_step"] = 1
        return real_train(*args, **kwargs)

    def crashing_eval(*args, **kwargs):  # dies during stage 1's evaluation (the 3rd task evaluation)
        evals.append(1)
        if crashes["eval"] and len(evals) == 3:
            crashes["eval"] = 0
            raise KeyboardInterrupt("killed")
        return real_eval(*args, **kwargs)

    monkeypatch.setattr(run_module, "train_lora", crashing_train)
    monkeypatch.setattr(run_module, "evaluate", crashing_eval)
    out = root / "resumed"
    stage2 = out / "pool" / "stages" / "stage-002"
    with pytest.raises(KeyboardInterrupt):
        LifelongRun(out, tasks, cfg, loader(base), progress=False, say=lambda s: None).run()
    assert not (out / "pool" / "stages" / "stage-001" / "eval.json").exists()
    with pytest.raises(KeyboardInterrupt):
        LifelongRun(out, tasks, cfg, loader(base), progress=False, say=lambda s: None).run()
    assert (stage2 / "train-ckpt" / "train-state.pt").exists() and not (stage2 / "adapter").exists()
    res = LifelongRun(out, tasks, cfg, loader(base), progress=False, say=lambda s: None).run()
    assert not any(crashes.values())
    assert state(out) == state(root / "whole")
    assert res["accuracy"] == json.loads((root / "whole" / "summary.json").read_text())["accuracy"]


def write_config(root: Path, data, base: Path, **extra) -> Path:
    stages = write_stage_files(root, data, ("colours", "successor"), root / "tasks")
    stages[1]["selection"] = {"budget": 10}
    doc = {"out": str(root / "run-out"), "model": {"base": str(base)}, "lora": {"r": 4, "alpha": 8},
           "train": {"lr": 1e-3, "epochs": 1, "batch_size": 4}, "features": {"layers": "last", "out_dim": 32},
           "selection": {"k": 2, "budget": 8, "pool_budget": 18}, "eval": {"limit": 4, "max_new_tokens": 2, "batch_size": 3},
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
    stages = out / "pool" / "stages"
    assert json.loads((stages / "stage-000" / "eval.json").read_text())["scores"].keys() == {"colours", "successor"}
    assert len(json.loads((stages / "stage-002" / "eval.json").read_text())["examples"]["colours"]) == 4  # eval limit


def test_run_config_errors_are_all_reported_before_any_work(setting, capsys):
    root, data, _, _, base = setting
    bad = root / "bad"
    bad.mkdir()
    config = write_config(bad, data, root / "no-such-model", selection={"k": 0, "budgett": 3})
    doc = config.read_text().replace("successor-test.json", "missing-test.json")
    config.write_text(doc)
    assert cli.main(["run", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    for expected in ("model: base is", "selection.budgett", "selection.k", "stages.1: test file", "missing-test.json does not exist"):
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
    targets = json.loads((tmp_path / "pool" / "stages" / "stage-002" / "adapter" / "adapter_config.json").read_text())["target_modules"]
    assert set(targets) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


RUN_SCRIPT = """
import json, sys
sys.path.insert(0, {tests!r})
from adaptinf_fast.lifelong.config import RunConfig
from adaptinf_fast.lifelong.run import LifelongRun, Task
from test_lifelong_run import loader
cfg = RunConfig.model_validate(json.loads({cfg!r}))
tasks = [Task(**t) for t in json.loads({tasks!r})]
LifelongRun({out!r}, tasks, cfg, loader(__import__("pathlib").Path({base!r})), progress=False, say=lambda s: None).run()
"""


@pytest.mark.slow
def test_two_process_run_equals_one_process(setting, tmp_path):
    """A whole two-stage run under torchrun --nproc-per-node 2 (gloo, CPU), killed in training and
    resumed on two processes: the same selection, pruning, adapter and answers as one uninterrupted
    process (dropout off: each process would draw its own masks)."""
    import os
    import subprocess
    import sys

    root, data, _, cfg, base = setting
    cfg = cfg.model_copy(update={"lora": cfg.lora.model_copy(update={"dropout": 0.0})})
    tasks = write_stage_files(tmp_path, data, ("colours", "successor"), root / "tasks")
    one = LifelongRun(tmp_path / "one", [Task(**t) for t in tasks], cfg, loader(base), progress=False,
                      say=lambda s: None).run()
    script = tmp_path / "run.py"
    script.write_text(RUN_SCRIPT.format(tests=str(Path(__file__).parent), cfg=cfg.model_dump_json(),
                                        tasks=json.dumps(tasks), out=str(tmp_path / "two"), base=str(base)))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "ADAPTINF_FAULT")}
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29518", str(script)]
    # both processes are killed right after stage 1's third optimizer step (and its checkpoint)...
    killed = subprocess.run(launch, capture_output=True, text=True, env={**env, "ADAPTINF_FAULT": "train:step3"},
                            timeout=600)
    assert killed.returncode != 0 and (tmp_path / "two" / "pool" / "stages" / "stage-001" / "train-ckpt").exists()
    assert not (tmp_path / "two" / "pool" / "stages" / "stage-001" / "adapter").exists()
    # ...and the same command on two processes resumes from the committed steps and that checkpoint
    res = subprocess.run(launch, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    for t in (1, 2):
        for name in ("selection.json", "prune.json"):
            a, b = (json.loads((tmp_path / run / "pool" / "stages" / f"stage-{t:03d}" / name).read_text())
                    for run in ("one", "two"))
            assert a == b, (t, name)
    np.testing.assert_allclose(two["accuracy"], one["accuracy"])
    assert two["metrics"] == pytest.approx(one["metrics"], nan_ok=True)
    from safetensors.torch import load_file

    w1, w2 = (load_file(tmp_path / run / "pool" / "stages" / "stage-002" / "adapter" / "adapter_model.safetensors")
              for run in ("one", "two"))
    assert w1.keys() == w2.keys() and all(torch.allclose(w1[k], w2[k], rtol=1e-4, atol=1e-6) for k in w1)
    e1, e2 = (json.loads((tmp_path / run / "pool" / "stages" / "stage-002" / "eval.json").read_text())["examples"]
              for run in ("one", "two"))
    assert e1 == e2  # the same greedy answers, evaluated in shards on two processes


def test_a_second_run_on_a_busy_folder_stops_at_once(setting, tmp_path):
    from adaptinf_fast._io import FolderBusyError
    from conftest import lock_held_elsewhere

    root, _, tasks, cfg, base = setting
    with lock_held_elsewhere(tmp_path, "run"):
        with pytest.raises(FolderBusyError, match="in use by pid"):
            LifelongRun(tmp_path, tasks, cfg, loader(base), progress=False, say=lambda s: None).run()
        assert not (tmp_path / "pool").exists() and not (tmp_path / "run.json").exists()
