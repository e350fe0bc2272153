"""Budget per cluster (DESIGN §4.6): the integer split lives with the ops that also use it."""

from ..ops.budget import split_budget

__all__ = ["split_budget"]
