"""A standard PEFT LoRA training loop for one stage (DESIGN §2 step 5), resumable bit for bit.

AdamW over the trainable parameters, linear warm-up then cosine decay, gradient accumulation,
gradient-norm clipping, bf16 or fp16 autocast on CUDA (``precision``; fp16 with a gradient scaler;
none on CPU), seeded shuffling and dropout (the global torch RNG is seeded from ``cfg.seed`` when
a run starts). With ``ckpt_dir``, a
checkpoint (trainable weights, optimizer, scheduler, step, RNG states) is written atomically every
``save_every`` optimizer steps and at the end; calling again with the same arguments resumes from
it and ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from ..features.batching import collate
from ..features.featureset import atomic_write


@dataclass
class TrainConfig:
    lr: float = 2e-4
    epochs: int = 1
    batch_size: int = 8
    grad_accum: int = 1
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    save_every: int = 50
    pad_token_id: int = 0
    precision: str = "bf16"  # autocast on CUDA: "bf16", "fp16" (with gradient scaling) or "fp32"

    def validate(self) -> None:
        if self.lr <= 0 or self.epochs < 1 or self.batch_size < 1 or self.grad_accum < 1 or self.save_every < 1:
            raise ValueError(f"invalid training config {asdict(self)}")
        if self.precision not in ("bf16", "fp16", "fp32"):
            raise ValueError(f"precision is {self.precision!r}; expected 'bf16', 'fp16' or 'fp32'")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio is {self.warmup_ratio}; expected [0, 1)")


def _lr_lambda(total: int, warmup: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


def _batches(n: int, cfg: TrainConfig):
    """Deterministic (epoch, batch index list) sequence: a seeded permutation per epoch."""
    for epoch in range(cfg.epochs):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch)).tolist()
        for b0 in range(0, n, cfg.batch_size):
            yield order[b0 : b0 + cfg.batch_size]


def train_lora(model, items: Sequence[dict], cfg: TrainConfig, *, ckpt_dir: str | Path | None = None,
               progress: bool = True, _stop_after_step: int | None = None) -> dict:
    """Train ``model``'s trainable (LoRA) parameters on encoded ``items`` (``input_ids``, ``labels``,
    optional ``pixel_values``). Returns {"steps", "losses" (per optimizer step)}.
    ``_stop_after_step`` (tests) interrupts after that step as a crash would, after its checkpoint."""
    cfg.validate()
    if not items:
        raise ValueError("no training items")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters (is the LoRA adapter trainable?)")
    device = params[0].device
    batches = list(_batches(len(items), cfg))
    total = math.ceil(len(batches) / cfg.grad_accum)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(total, int(cfg.warmup_ratio * total)))
    cuda = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=cuda and cfg.precision == "fp16")
    step, losses = 0, []
    ckpt = Path(ckpt_dir) / "train-state.pt" if ckpt_dir is not None else None
    if ckpt is not None and ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        if state["config"] != asdict(cfg) or state["n_items"] != len(items):
            raise ValueError(f"{ckpt} was written for a different training run; use a fresh ckpt_dir")
        with torch.no_grad():
            for p, saved in zip(params, state["params"]):
                p.copy_(saved)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        step, losses = state["step"], state["losses"]
    else:  # dropout masks depend on the seed only, not on what the process did before
        torch.manual_seed(cfg.seed)

    def save() -> None:
        if ckpt is None:
            return
        state = {"config": asdict(cfg), "n_items": len(items), "step": step, "losses": losses,
                 "params": [p.detach().cpu().clone() for p in params], "optimizer": opt.state_dict(),
                 "scheduler": sched.state_dict(), "scaler": scaler.state_dict(), "rng": torch.get_rng_state(),
                 "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
        atomic_write(ckpt, lambda f: torch.save(state, f))

    was_training = model.training
    model.train()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)
    autocast = torch.autocast("cuda", dtype=dtype) if cuda and dtype else torch.autocast("cpu", enabled=False)
    bar = tqdm(total=total, initial=step, desc="train", unit="step", disable=not progress)
    try:
        for s in range(step, total):
            opt.zero_grad(set_to_none=True)
            group = batches[s * cfg.grad_accum : (s + 1) * cfg.grad_accum]
            step_loss = 0.0
            for idx in group:
                batch = {k: v.to(device) for k, v in collate([items[i] for i in idx], cfg.pad_token_id).items()}
                with autocast:
                    loss = model(**batch).loss / len(group)
                scaler.scale(loss).backward()
                step_loss += float(loss.detach())
            scaler.unscale_(opt)  # clip the true gradients (a no-op unless fp16)
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            scaler.step(opt)
            scaler.update()
            sched.step()
            step = s + 1
            losses.append(step_loss)
            bar.update(1)
            if step % cfg.save_every == 0 or step == total:
                save()
            if _stop_after_step is not None and step >= _stop_after_step:
                raise KeyboardInterrupt(f"stopped after step {step}")
    finally:
        bar.close()
        model.train(was_training)
        opt.zero_grad(set_to_none=True)
    return {"steps": step, "losses": losses}
