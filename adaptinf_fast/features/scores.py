"""Per-sample scores of DESIGN §4.4 from one forward's logits."""

from __future__ import annotations

import torch

SCORES = ("ppl", "el2n", "entropy", "grand", "ig")


def token_stats(logits: torch.Tensor, labels: torch.Tensor):
    """Shifted next-token statistics. Returns (nll (B, T-1) float32, response mask (B, T-1) bool,
    log-probs (B, T-1, V) float32). Labels of -100 mark prompt and padding."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    target = labels[:, 1:]
    mask = target != -100
    nll = -logp.gather(-1, target.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return torch.where(mask, nll, torch.zeros_like(nll)), mask, logp


def mean_over_response(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum(1) / mask.sum(1).clamp_min(1)


def sample_scores(nll: torch.Tensor, mask: torch.Tensor, logp: torch.Tensor) -> dict[str, torch.Tensor]:
    """ppl = exp(mean ℓ); el2n = mean ‖onehot(y) − p‖₂; entropy = mean H(p) (response tokens only)."""
    with torch.no_grad():
        p = logp.exp()
        p_y = (-nll).exp()
        el2n = (1.0 - 2.0 * p_y + p.pow(2).sum(-1)).clamp_min(0).sqrt()
        entropy = -(p * logp).sum(-1)
        return {
            "ppl": mean_over_response(nll, mask).exp(),
            "el2n": mean_over_response(el2n, mask),
            "entropy": mean_over_response(entropy, mask),
        }
