"""Model-side continual-learning strategies on the lifelong loop, combinable with any selection
(DESIGN §8). ``strategy`` in a run config names one; each is one file behind ``base.Strategy``
(what training starts from, what trains, what is deployed after a stage, how an input is routed),
and the runner (``lifelong/run.py``) names none of them:

* ``sequential`` (default, ``base.py``): one LoRA adapter carried over from stage to stage.
* ``merge:average`` / ``merge:ties`` / ``merge:copa`` (``merge.py``): every stage trains its own
  task adapter from the run's initial adapter; the model after stage t is the training-free merge
  of task adapters 1..t (``ops.merge``: the mean of the updates, TIES, or CoPA-Merging as its
  official code computes it).
* ``hide`` (``hide.py``): HiDe-LLaVA as its official code computes it: one expert per task in one
  LoRA (``lifelong/experts.py``), trained one per stage; task-general layers sum the experts,
  the task-specific ones (the last layer by default) mix them by the task router's weights
  (``lifelong/routing.py``).

* ``disco`` (``disco.py``): DISCO as MCITlib's centralised port computes it: one LoRA subspace
  per task on the MLP projections, trained one per stage, mixed at every layer by softmax(cos of
  the text feature to each task's text prototype / 0.05).
* ``modalprompt`` (``modalprompt.py``): ModalPrompt as its official code computes it: the model
  frozen, per task L prompt vectors and an MLP into the router's CLIP space; the best-matching
  tasks' prompts are fused after BOS by their prototypes' dual-modality similarity.

Every stage keeps its adapter (``stage-NNN/adapter``), so a merge can be re-applied to a finished
run without training (``adaptinf-fast merge RUN --method copa``).
"""

from __future__ import annotations

from .base import Strategy

STRATEGIES = ("sequential", "merge:average", "merge:ties", "merge:copa", "hide", "disco", "modalprompt")


def check(strategy: str) -> str:
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy is {strategy!r}; expected one of {list(STRATEGIES)}")
    return strategy


def get(strategy: str) -> type[Strategy]:
    """The class of ``strategy``."""
    check(strategy)
    if strategy.startswith("merge:"):
        from .merge import Merge

        return Merge
    if strategy == "hide":
        from .hide import Hide

        return Hide
    if strategy == "disco":
        from .disco import Disco

        return Disco
    if strategy == "modalprompt":
        from .modalprompt import ModalPrompt

        return ModalPrompt
    return Strategy


__all__ = ["STRATEGIES", "Strategy", "check", "get"]
