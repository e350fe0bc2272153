"""The PEFT LoRA training loop: it learns, only LoRA weights move, and kill-and-resume is bit-exact."""

from __future__ import annotations

import pytest
import torch

from adaptinf_fast.lifelong.train import TrainConfig, train_lora
from tiny_models import random_rows, tiny_llama


def response_accuracy(model, rows):
    from adaptinf_fast.features.batching import collate

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
    with pytest.raises(ValueError, match="invalid training config"):
        train_lora(tiny_llama(), random_rows(2, torch.Generator()), TrainConfig(batch_size=0), progress=False)


def test_bad_precision():
    with pytest.raises(ValueError, match="precision"):
        train_lora(tiny_llama(), random_rows(2, torch.Generator()), TrainConfig(precision="fp8"), progress=False)
