"""Per-sample scores of DESIGN §4.4 from one forward's logits."""

from __future__ import annotations

import torch

SCORES = ("ppl", "el2n", "entropy", "grand", "ig")
RULES = ("adaptinf", "release")


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


def _release_entropy(p: torch.Tensor, last_logits: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    """The release's entropy score: the mean over every attended position — prompt, image tokens
    and the last one, which predicts nothing — of -Σ p·ln(p + 1e-10). ``p``: the shifted
    positions' probabilities (B, T-1, V); rows are right-padded."""
    def h(q: torch.Tensor) -> torch.Tensor:
        return -(q * (q + 1e-10).log()).sum(-1)

    per_pos = torch.cat([h(p), h(torch.softmax(last_logits.float(), -1)).unsqueeze(1)], dim=1)
    return mean_over_response(per_pos, attn.bool())


def sample_scores(nll: torch.Tensor, mask: torch.Tensor, logp: torch.Tensor, *, rules: str = "adaptinf",
                  last_logits: torch.Tensor | None = None, attn: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Scores of each sample from its next-token statistics (``token_stats``).

    ``rules="adaptinf"`` (DESIGN §4.4): ppl = exp(mean ℓ); el2n = mean ‖onehot(y) − p‖₂; entropy =
    mean H(p), all over response tokens. ``rules="release"``: ppl = mean exp(ℓ) and entropy over all
    attended positions (``last_logits`` (B, V): the logits of the final position; ``attn`` (B, T)),
    as the release computes them; el2n is the same. Returns name -> (B,) float32.
    """
    with torch.no_grad():
        p = logp.exp()
        p_y = (-nll).exp()
        el2n = (1.0 - 2.0 * p_y + p.pow(2).sum(-1)).clamp_min(0).sqrt()
        if rules == "release":
            return {"ppl": mean_over_response(nll.exp(), mask), "el2n": mean_over_response(el2n, mask),
                    "entropy": _release_entropy(p, last_logits, attn)}
        entropy = -(p * logp).sum(-1)
        return {
            "ppl": mean_over_response(nll, mask).exp(),
            "el2n": mean_over_response(el2n, mask),
            "entropy": mean_over_response(entropy, mask),
        }
