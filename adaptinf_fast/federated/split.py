"""FCIT's client data: each stage's records split over the clients by a Dirichlet(β) draw on
quantity, the clients sampled per round, and which stage's shard a client trains on.

Where we differ from the official code (``Ghy0501/FCIT``, ``Fed_utils/process_data.py``), on purpose:

* the draw is seeded (the official one uses numpy's unseeded global RNG);
* every record goes to exactly one client: shares are rounded by largest remainder (the official
  floor drops the N − Σ⌊w_c N⌋ leftovers);
* the minimum per client is the one asked for (the official callers pass β as ``min_size``) and is
  met by moving records from the largest shard (the official code redraws until it holds);
* the round's clients are drawn by a generator seeded with (seed, stage, round), in ascending id
  order (the official code seeds numpy with ``stage * 10 + round`` and visits a Python set).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def dirichlet_split(n: int, clients: int, beta: float, min_size: int = 1, seed: int = 0) -> list[np.ndarray]:
    """Indices 0..n-1 split over ``clients`` shards (int64 arrays, each sorted) whose sizes follow
    one Dirichlet(β, …, β) draw on quantity; every index in exactly one shard, each shard at
    least ``min_size`` long."""
    if clients < 1 or beta <= 0 or min_size < 0:
        raise ValueError(f"dirichlet_split needs clients >= 1, beta > 0, min_size >= 0; got {clients}, {beta}, {min_size}")
    if clients * min_size > n:
        raise ValueError(f"{n} records cannot give {clients} clients {min_size} each: lower federated.min_size "
                         "or federated.clients")
    rng = np.random.default_rng([seed, n, clients])
    share = rng.dirichlet([beta] * clients) * n
    sizes = np.floor(share).astype(np.int64)
    remainder = share - sizes
    sizes[np.argsort(-remainder, kind="stable")[: n - int(sizes.sum())]] += 1  # largest remainders first
    for c in np.flatnonzero(sizes < min_size):  # top up from the largest shard
        while sizes[c] < min_size:
            donor = int(np.argmax(sizes))
            give = min(min_size - sizes[c], sizes[donor] - min_size)
            sizes[donor] -= give
            sizes[c] += give
    order = rng.permutation(n)
    cuts = np.cumsum(sizes)[:-1]
    return [np.sort(part) for part in np.split(order, cuts)]


def sample_clients(stage: int, rnd: int, clients: int, per_round: int, seed: int = 0) -> list[int]:
    """The ``per_round`` client ids of round ``rnd`` of stage ``stage`` (ascending)."""
    if not 1 <= per_round <= clients:
        raise ValueError(f"federated.per_round must be in 1..clients ({clients}); got {per_round}")
    rng = np.random.default_rng([seed, 7919, stage, rnd])
    return sorted(int(c) for c in rng.choice(clients, per_round, replace=False))


def stage_tasks(tasks: Sequence[str], scenario: str, groups: Sequence[Sequence[str]] | None = None) -> list[list[str]]:
    """The tasks of each stage: one per stage (``task``: FCIT's task-related setting), or the given
    ``groups`` (``capability``: grouped datasets per stage; default consecutive pairs)."""
    if scenario == "task":
        return [[t] for t in tasks]
    if scenario != "capability":
        raise ValueError(f"federated.scenario is {scenario!r}; expected 'task' or 'capability'")
    groups = [list(g) for g in groups] if groups else [list(tasks[i:i + 2]) for i in range(0, len(tasks), 2)]
    flat = [t for g in groups for t in g]
    if sorted(flat) != sorted(tasks) or len(set(flat)) != len(flat) or any(not g for g in groups):
        raise ValueError(f"federated.groups must hold every task once, in non-empty groups; got {groups} for {list(tasks)}")
    return groups


def shard_stage(stage: int, client: int, heterogeneous: bool) -> int:
    """Which stage's shard client ``client`` trains on at stage ``stage`` (0-based): its own stage's
    (homogeneous), or, heterogeneous, every odd client the previous stage's shard again from stage 1
    on (FCIT's heterogeneous lists re-load earlier tasks' shards of the same client, by position in
    the round; ours go by client id, so a client's data does not depend on who else is sampled)."""
    return stage - (client % 2) if heterogeneous and stage > 0 else stage


__all__ = ["dirichlet_split", "sample_clients", "shard_stage", "stage_tasks"]
