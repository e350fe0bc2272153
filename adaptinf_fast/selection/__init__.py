"""Selection logic of the Adapt-∞ stage: selectors (§4.5), budgets (§4.6), CCS sampling (§4.7)."""

from .budget import split_budget
from .ccs import ccs_bins, ccs_sample
from .selector import choose_selectors, histogram_entropy

__all__ = ["ccs_bins", "ccs_sample", "choose_selectors", "histogram_entropy", "split_budget"]
