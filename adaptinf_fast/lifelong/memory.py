"""How much memory a stage's steps take at most, from the pool's shape (``adaptinf-fast status``).

Features stay on disk (16-bit, memory-mapped: their pages are the operating system's cache, which
it evicts under pressure, and are not counted here). What each step allocates, in bytes, with N
samples in the pool, D the feature width, K clusters, s bytes per stored feature value (2 for
float16 / bfloat16), c = k-means chunk rows, g = rows of one pruning group (clusters packed up to
min(N, ``max_rows``) rows; when the largest cluster n_max is larger, max(512, ``max_rows`` − 4096) +
4096 for its out-of-core super-block and column chunk), S scores:

* features (the feature pass): one shard of ``shard_size`` samples, float32: 4096 · D · 4, plus
  the model and its per-batch activations (not modelled here).
* cluster (k-means, streamed): labels and distances 12 N; up to three chunks read (the current
  one's, the next one read ahead, a copy) 3 · c · D · s; the prepared chunk and its predecessor
  2 · c · D · 4 and its distances to the centres c · K · 4; centre sums K · D · 12;
  k-means++ on a sample of m = max(10 000, 20 K) rows, gathered, made float32 and squared:
  m · D · (s + 8) + (2 + ln K) · m · 8.
  On a GPU the first two terms live in host memory, the rest in device memory.
* select: O(N) scalars: 8 N per score (float64) + 16 N (labels, order) — S · 8 N + 16 N — and
  the new manifest (select and prune write a new manifest). A selection that prunes first
  (``method: semdedup``, or ``rules: release`` with ``prune_mode: budget``: ``select_prunes``) adds
  the prune step's working set below.
* prune: the within-cluster order (two passes over chunks of o = min(``max_rows``, 64 MiB / 4D)
  rows: o · D · (s + 8) and centroid sums K · D · 8) and 40 N for order, results and the
  cluster-major permutation; one group of g rows
  gathered (g · D · s), normalised (g · D · 4) and one more float32 or screened copy (g · D · 4:
  the kernels' 16-bit screen, a cluster-major copy); the tiles 512 × 4096 · 4; and the new manifest.

Every step also holds the manifest (``manifest``: ~400 bytes a sample as Python objects) and the
steps that read the stage's features its bookkeeping: ids, scores, labels, the id → source map
(~500 bytes a sample, measured); the cluster step imports scikit-learn's metrics (~64 MB) for
its agreement with the sources. Each figure below is the step's whole peak above the imports
(torch and the package, ~290 MB), bookkeeping and manifest included: on this machine's rounds
(bench/results/pool-scale-cpu.jsonl) the measured peaks stay under it.
"""

from __future__ import annotations

import math

from ..ops.dedup.reference import COL_CHUNK, ROW_TILE
from ..ops.dedup.streamed import default_rows
from ..ops.kmeans.lloyd import CHUNK_BYTES

MANIFEST_BYTES_PER_SAMPLE = 400  # a manifest row as a Python dict, keys and repeated values interned (measured ~350)
BOOKKEEPING_BYTES_PER_SAMPLE = 500  # ids, scores, labels, the id -> source map of a step that reads the stage
STEP_IMPORTS = 64 << 20  # what the cluster step imports on its first use (scikit-learn's metrics)
ORDER_CHUNK_BYTES = 64 << 20  # ops.dedup: float32 bytes of one chunk of the order pass


def estimate(n: int, d: int, k: int, *, largest_cluster: int | None = None, storage_bytes: int = 2,
             chunk_rows: int | None = None, max_rows: int | None = None, scores: int = 5,
             shard_size: int = 4096, select_prunes: bool = False) -> dict[str, int]:
    """Peak bytes each step allocates (see the module docstring), plus ``manifest``."""
    c = min(n, chunk_rows or max(1, CHUNK_BYTES // (4 * max(d, 1))))
    n_max = largest_cluster if largest_cluster is not None else n
    cap = max_rows or default_rows(d)
    # groups pack clusters up to the cap; a cluster over it runs out of core (a super-block and a column chunk)
    g = min(n, cap) if n_max <= cap else max(ROW_TILE, cap - COL_CHUNK) + COL_CHUNK
    m = min(n, max(10_000, 20 * k))
    trials = 2 + int(math.log(max(k, 1)))
    cluster = 12 * n + 3 * c * d * storage_bytes + 2 * c * d * 4 + c * k * 4 + k * d * 12 \
        + m * d * (storage_bytes + 8) + trials * m * 8
    order_rows = min(n, max_rows or max(1, ORDER_CHUNK_BYTES // (4 * max(d, 1))))
    order = order_rows * d * (storage_bytes + 8) + k * d * 8
    prune = order + 40 * n + g * d * (storage_bytes + 4 + 4) + ROW_TILE * COL_CHUNK * 4
    manifest = MANIFEST_BYTES_PER_SAMPLE * n
    held = manifest + BOOKKEEPING_BYTES_PER_SAMPLE * n  # what every step reading the stage holds besides its work
    select = scores * 8 * n + 16 * n + (prune if select_prunes else 0)
    return {"features": shard_size * d * 4 + manifest + held, "cluster": cluster + held + STEP_IMPORTS,
            "select": select + manifest + held, "prune": prune + manifest + held, "manifest": manifest}


def format_bytes(b: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if b < 1024 or unit == "TiB":
            return f"{b:.0f} {unit}" if unit == "B" else f"{b:.1f} {unit}"
        b /= 1024
    return f"{b:.1f} TiB"


__all__ = ["estimate", "format_bytes"]
