"""The PEFT LoRA training loop of one stage (DESIGN §2 step 5) on ``accelerate``, resumable bit for bit.

AdamW over the trainable parameters, ``transformers``' warm-up + cosine schedule, gradient
accumulation, gradient-norm clipping, mixed precision on GPU (``precision``: accelerate's bf16,
or fp16 with its gradient scaler; none on CPU), optional gradient checkpointing, and TensorBoard
logs when it is installed. Launched with ``torchrun``/``accelerate launch`` the model is wrapped by
accelerate (DDP; FSDP/DeepSpeed as accelerate's config says) and each micro-batch is split across
the processes; the loss is normalised by the micro-batch's token count over all processes, so
the update equals the single-process one up to float rounding.

With ``ckpt_dir``, a checkpoint (trainable weights, optimizer, scheduler, scaler, step, RNG
states, the config — tensors and plain types, loaded with ``torch.load(weights_only=True)``) is
written atomically every ``save_every`` optimizer steps and at the end; calling again with the same
arguments resumes from it and ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .._io import atomic_write, fault_point, progress_bar
from ..data.encoder import collate
from .config import TrainConfig

__all__ = ["TrainConfig", "train_lora"]


def _batches(n: int, cfg: TrainConfig):
    """Deterministic (epoch, batch index list) sequence: a seeded permutation per epoch."""
    for epoch in range(cfg.epochs):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch)).tolist()
        for b0 in range(0, n, cfg.batch_size):
            yield order[b0 : b0 + cfg.batch_size]


def _tracker(cfg: TrainConfig, log_dir: Path | None) -> str | None:
    if log_dir is None or cfg.log == "none":
        return None
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        if cfg.log == "tensorboard":
            raise ImportError("train.log='tensorboard' needs the tensorboard package (pip install tensorboard)") from None
        return None
    return "tensorboard"


def _accelerator(cfg: TrainConfig, device: torch.device, log_dir: Path | None):
    from accelerate import Accelerator

    cuda = device.type == "cuda"
    precision = {"bf16": "bf16", "fp16": "fp16"}.get(cfg.precision, "no") if cuda else "no"
    tracker = _tracker(cfg, log_dir)
    acc = Accelerator(cpu=not cuda, mixed_precision=precision, log_with=tracker,
                      project_dir=str(log_dir) if tracker else None)
    if tracker:
        acc.init_trackers("train", config={k: v for k, v in cfg.model_dump().items() if isinstance(v, (int, float, str, bool))})
    return acc


def _token_nll_sum(model, batch: dict) -> torch.Tensor:
    """Sum of the response-token NLLs of ``batch`` (the caller divides by the micro-batch's token
    count over every process, so the processes' losses add up to the micro-batch's mean)."""
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    target = batch["labels"][:, 1:]
    return F.cross_entropy(logits[:, :-1].float().flatten(0, 1), target.flatten(), ignore_index=-100,
                           reduction="sum")


def train_lora(model, items: Sequence[dict], cfg: TrainConfig, *, ckpt_dir: str | Path | None = None,
               progress: bool = True, log_dir: str | Path | None = None, collate_fn: Callable | None = None,
               extra_loss: Callable[[], torch.Tensor] | None = None, _stop_after_step: int | None = None) -> dict:
    """Train ``model``'s trainable (LoRA) parameters on encoded ``items`` (``input_ids``, ``labels``,
    image inputs). ``collate_fn``: how items become a batch (the encoder's ``collate``; default: the
    plain padding of ``data.encoder.collate``). ``extra_loss()``: called after each micro-batch's
    forward, the sum over that micro-batch's rows (on this process) of a per-row auxiliary loss; it
    is added as its mean over the micro-batch, like the LM loss (a strategy's, e.g. ModalPrompt's).
    Returns {"steps", "losses" (per optimizer step, over all processes)}. ``_stop_after_step`` (tests) interrupts after that step as a crash would, after
    its checkpoint."""
    from transformers import get_cosine_schedule_with_warmup

    if not items:
        raise ValueError("no training items")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters (is the LoRA adapter trainable?)")
    device = params[0].device
    acc = _accelerator(cfg, device, Path(log_dir) if log_dir is not None else None)
    world, rank = acc.num_processes, acc.process_index
    batches = list(_batches(len(items), cfg))
    tokens = [int((it["labels"][1:] != -100).sum()) for it in items]  # response tokens per item
    total = math.ceil(len(batches) / cfg.grad_accum)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = get_cosine_schedule_with_warmup(opt, int(cfg.warmup_ratio * total), total)
    step, losses = 0, []
    ckpt = Path(ckpt_dir) / "train-state.pt" if ckpt_dir is not None else None
    if ckpt is not None and ckpt.exists():
        state = torch.load(ckpt, weights_only=True)
        if state["config"] != cfg.model_dump() or state["n_items"] != len(items):
            raise ValueError(f"{ckpt} was written for a different training run; use a fresh ckpt_dir")
        with torch.no_grad():
            for p, saved in zip(params, state["params"]):
                p.copy_(saved)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        if state.get("cuda_rng") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        step, losses = state["step"], state["losses"]
    else:  # dropout masks depend on the seed only, not on what the process did before
        torch.manual_seed(cfg.seed + rank)
    if cfg.gradient_checkpointing:
        _checkpointing(model, True)
    wrapped, opt_w = acc.prepare(model, opt)  # the schedule steps once per optimizer step, by us
    if ckpt is not None and ckpt.exists() and state.get("scaler") and acc.scaler is not None:
        acc.scaler.load_state_dict(state["scaler"])

    def save() -> None:
        if ckpt is None or rank != 0:
            return
        state = {"config": cfg.model_dump(), "n_items": len(items), "step": step, "losses": losses,
                 "params": [p.detach().cpu().clone() for p in params], "optimizer": opt.state_dict(),
                 "scheduler": sched.state_dict(), "scaler": acc.scaler.state_dict() if acc.scaler is not None else None,
                 "rng": torch.get_rng_state(),
                 "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
        atomic_write(ckpt, lambda f: torch.save(state, f))

    was_training = model.training
    model.train()
    bar = progress_bar(total=total, initial=step, desc="train", unit="step", progress=progress and rank == 0)
    try:
        for s in range(step, total):
            opt_w.zero_grad(set_to_none=True)
            group = batches[s * cfg.grad_accum : (s + 1) * cfg.grad_accum]
            step_loss = torch.zeros((), device=device)
            for j, idx in enumerate(group):
                n_tokens = sum(tokens[i] for i in idx)
                mine = idx[rank::world]
                scale = world / len(group) / max(n_tokens, 1)
                if not mine:  # fewer samples than processes: take part in the all-reduce with zero loss
                    mine, scale = idx[:1], 0.0
                picked = [items[i] for i in mine]
                batch = collate_fn(picked) if collate_fn is not None else collate(picked, cfg.pad_token_id)
                batch = {k: v.to(device) for k, v in batch.items()}
                sync = acc.no_sync(wrapped) if j < len(group) - 1 and world > 1 else contextlib.nullcontext()
                with sync, acc.autocast():
                    loss = _token_nll_sum(wrapped, batch) * scale
                    if extra_loss is not None:  # a row mean over the whole micro-batch, as the LM term's token mean
                        loss = loss + extra_loss() * (world / len(group) / len(idx) if scale else 0.0)
                    acc.backward(loss)
                step_loss += loss.detach() / world
            acc.clip_grad_norm_(params, cfg.max_grad_norm)
            opt_w.step()
            sched.step()
            step = s + 1
            total_loss = acc.reduce(step_loss, "sum") if world > 1 else step_loss
            losses.append(float(total_loss))
            acc.log({"loss": losses[-1], "lr": sched.get_last_lr()[0]}, step=step)
            bar.update(1)
            if step % cfg.save_every == 0 or step == total:
                save()
            fault_point(f"train:step{step}")  # tests: a kill right after this step's checkpoint
            if _stop_after_step is not None and step >= _stop_after_step:
                raise KeyboardInterrupt(f"stopped after step {step}")
    finally:
        bar.close()
        for tracker in acc.trackers:  # not end_training(): it would also tear down the process group
            tracker.finish()
        model.train(was_training)
        opt.zero_grad(set_to_none=True)
        if cfg.gradient_checkpointing:
            _checkpointing(model, False)
        acc.unwrap_model(wrapped, keep_fp32_wrapper=False)
        acc.free_memory()
    return {"steps": step, "losses": losses}


def _checkpointing(model, on: bool) -> None:
    """Activation (gradient) checkpointing on or off (transformers 5 names it activation_*)."""
    new = hasattr(model, "activation_checkpointing_enable")
    if on and new:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    elif on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        (model.activation_checkpointing_disable if new else model.gradient_checkpointing_disable)()
