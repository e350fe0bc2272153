"""Selection logic of the Adapt-∞ stage: budgets (§4.6); selectors and CCS come with the stage issue."""

from .budget import split_budget

__all__ = ["split_budget"]
