"""The PEFT LoRA training loop: it learns, only LoRA weights move, and kill-and-resume is bit-exact."""

from __future__ import annotations

import contextlib

import pytest
import torch

from adaptinf_fast.lifelong.experts import ExpertLoRA, OneHot
from adaptinf_fast.lifelong.train import TrainConfig, train_lora
from tiny_models import random_rows, tiny_llama


def response_accuracy(model, rows):
    from adaptinf_fast.data.encoder import collate

    model.eval()
    batch = collate(rows, 0)
    with torch.no_grad():
        pred = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].argmax(-1)
    target = batch["labels"][:, 1:]
    mask = target != -100
    return float((pred[mask] == target[mask]).float().mean())


def lora_state(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_training_lowers_the_loss_and_moves_only_lora():
    model = tiny_llama(seed=1)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    rows = random_rows(8, torch.Generator().manual_seed(0))
    for r in rows:  # a learnable rule: every response token is 7
        r["input_ids"] = torch.where(r["labels"] != -100, 7, r["input_ids"])
        r["labels"] = torch.where(r["labels"] != -100, 7, r["labels"])
    before = response_accuracy(model, rows)
    out = train_lora(model, rows, TrainConfig(lr=5e-2, epochs=15, batch_size=4, warmup_ratio=0.1), progress=False)
    # the frozen random lm_head caps how peaked the distribution gets, so judge the greedy answers
    assert out["steps"] == 30 and out["losses"][-1] < out["losses"][0] - 0.5
    assert before < 0.2 and response_accuracy(model, rows) == 1.0
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if not p.requires_grad)
    assert all(p.grad is None for p in model.parameters())


def test_kill_and_resume_equals_uninterrupted(tmp_path):
    rows = random_rows(10, torch.Generator().manual_seed(3))
    cfg = TrainConfig(lr=1e-3, epochs=2, batch_size=3, grad_accum=2, save_every=2, seed=5)
    clean = tiny_llama(seed=2)
    train_lora(clean, rows, cfg, progress=False)
    killed = tiny_llama(seed=2)
    with pytest.raises(KeyboardInterrupt):
        train_lora(killed, rows, cfg, ckpt_dir=tmp_path, progress=False, _stop_after_step=3)  # last ckpt: step 2
    resumed = tiny_llama(seed=2)  # a fresh process would rebuild the model from scratch
    out = train_lora(resumed, rows, cfg, ckpt_dir=tmp_path, progress=False)
    assert out["steps"] == 4
    a, b = lora_state(clean), lora_state(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="different training run"):
        train_lora(tiny_llama(seed=2), rows, TrainConfig(lr=2e-3, epochs=2, batch_size=3), ckpt_dir=tmp_path, progress=False)


def test_bad_config():
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp8")
    with pytest.raises(ValueError, match="no training items"):
        train_lora(tiny_llama(), [], TrainConfig(), progress=False)


def test_checkpoint_loads_without_unpickling_code(tmp_path):
    rows = random_rows(4, torch.Generator().manual_seed(1))
    train_lora(tiny_llama(seed=3), rows, TrainConfig(epochs=1, batch_size=2), ckpt_dir=tmp_path, progress=False)
    state = torch.load(tmp_path / "train-state.pt", weights_only=True)  # tensors and plain types only
    assert state["step"] == 2 and state["config"]["batch_size"] == 2


def test_gradient_checkpointing_gives_the_same_weights():
    rows = random_rows(6, torch.Generator().manual_seed(4))
    cfg = TrainConfig(lr=1e-3, epochs=2, batch_size=3, seed=1)
    a, b = tiny_llama(seed=5), tiny_llama(seed=5)
    train_lora(a, rows, cfg, progress=False)
    train_lora(b, rows, cfg.model_copy(update={"gradient_checkpointing": True}), progress=False)
    sa, sb = lora_state(a), lora_state(b)
    assert all(torch.allclose(sa[k], sb[k], rtol=1e-5, atol=1e-7) for k in sa)
    assert not b.base_model.model.model.gradient_checkpointing  # switched off again after training


def test_tensorboard_logs_when_installed(tmp_path):
    pytest.importorskip("tensorboard")
    rows = random_rows(4, torch.Generator().manual_seed(2))
    out = train_lora(tiny_llama(), rows, TrainConfig(epochs=1, batch_size=2, log="tensorboard"), progress=False,
                     log_dir=tmp_path / "logs")
    events = list((tmp_path / "logs").rglob("events.out.tfevents.*"))
    assert out["steps"] == 2 and events and events[0].stat().st_size > 0


DDP_SCRIPT = """
import contextlib, sys, torch, torch.distributed as dist
sys.path.insert(0, {tests!r})
from tiny_models import random_rows, tiny_llama
from adaptinf_fast.lifelong.experts import ExpertLoRA, OneHot
from adaptinf_fast.lifelong.train import TrainConfig, train_lora
dist.init_process_group("gloo")
model = tiny_llama(seed=2)
for m in model.modules():  # no dropout: its masks are per process
    if isinstance(m, torch.nn.Dropout):
        m.p = 0.0
rows = random_rows(10, torch.Generator().manual_seed(3))
mode = ExpertLoRA(model, 2).mode(OneHot(1)) if {experts} else contextlib.nullcontext()
with mode:
    out = train_lora(model, rows, TrainConfig(lr=1e-3, epochs=2, batch_size=3, grad_accum=2, seed=5), progress=False)
if dist.get_rank() == 0:
    torch.save({{"losses": out["losses"], "weights": {{n: p.detach() for n, p in model.named_parameters() if p.requires_grad}}}},
               {out!r})
dist.destroy_process_group()
"""


@pytest.mark.slow
@pytest.mark.parametrize("experts", [False, True], ids=["plain", "one-expert-of-two"])
def test_two_process_ddp_training_equals_one_process(tmp_path, experts):
    """torchrun --nproc-per-node 2 (gloo, CPU): each micro-batch split across the processes, the
    token-normalised loss all-reduced — the same weights and losses as one process up to rounding;
    also when one expert of an expert-LoRA layer trains (lifelong/experts.py)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT.format(tests=str(Path(__file__).parent), out=str(tmp_path / "ddp.pt"), experts=experts))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                          "29517", str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    got = torch.load(tmp_path / "ddp.pt", weights_only=True)
    model = tiny_llama(seed=2)
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    with ExpertLoRA(model, 2).mode(OneHot(1)) if experts else contextlib.nullcontext():
        want = train_lora(model, random_rows(10, torch.Generator().manual_seed(3)),
                          TrainConfig(lr=1e-3, epochs=2, batch_size=3, grad_accum=2, seed=5), progress=False)
    assert got["losses"] == pytest.approx(want["losses"], rel=1e-5)
    w = lora_state(model)
    assert all(torch.allclose(got["weights"][k], w[k], rtol=1e-4, atol=1e-6) for k in w)
