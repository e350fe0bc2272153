"""How much memory a stage's steps take at most, from the pool's shape (``adaptinf-fast status``).

Features stay on disk (16-bit, memory-mapped: their pages are the operating system's cache, which
it evicts under pressure, and are not counted here). What each step allocates, in bytes, with N
samples in the pool, D the feature width, K clusters, s bytes per stored feature value (2 for
float16 / bfloat16), c = k-means chunk rows, g = rows of one pruning group (the largest cluster
n_max when it fits in ``max_rows``, else max(512, ``max_rows`` − 4096) + 4096 for its out-of-core
super-block and column chunk), S scores:

* features (the feature pass): one shard of ``shard_size`` samples, float32: 4096 · D · 4, plus
  the model and its per-batch activations (not modelled here).
* cluster (k-means, streamed): labels and distances 12 N; two chunks read ahead 2 · c · D · s;
  the prepared chunk c · D · 4 and its distances to the centres c · K · 4; centre sums K · D · 12;
  k-means++ on a sample of m = max(10 000, 20 K) rows, gathered, made float32 and squared:
  m · D · (s + 8) + (2 + ln K) · m · 8.
  On a GPU the first two terms live in host memory, the rest in device memory.
* select: O(N) scalars: 8 N per score (float64) + 16 N (labels, order) — S · 8 N + 16 N — and
  the new manifest (select and prune rewrite every sample's row).
* prune: the within-cluster order (two passes over chunks of o = min(``max_rows``, 64 MiB / 4D)
  rows: o · D · (s + 8) and centroid sums K · D · 8) and 40 N for order, results and the
  cluster-major permutation; one group of g rows
  gathered (g · D · s), normalised (g · D · 4) and, on a GPU, screened (g · D · 2); the tiles
  512 × 4096 · 4; and the new manifest.

Besides these, every step holds the manifest (``manifest``: a few hundred bytes per sample as
Python objects) and the stage's ids and scores (``features.json``, ``scores.npz``).
"""

from __future__ import annotations

import math

from ..ops.dedup.reference import COL_CHUNK, ROW_TILE
from ..ops.dedup.streamed import default_rows
from ..ops.kmeans.lloyd import CHUNK_BYTES

MANIFEST_BYTES_PER_SAMPLE = 400  # a manifest row as a Python dict, keys and repeated values interned (measured ~350)
ORDER_CHUNK_BYTES = 64 << 20  # ops.dedup: float32 bytes of one chunk of the order pass


def estimate(n: int, d: int, k: int, *, largest_cluster: int | None = None, storage_bytes: int = 2,
             chunk_rows: int | None = None, max_rows: int | None = None, scores: int = 5,
             shard_size: int = 4096) -> dict[str, int]:
    """Peak bytes each step allocates (see the module docstring), plus ``manifest``."""
    c = min(n, chunk_rows or max(1, CHUNK_BYTES // (4 * max(d, 1))))
    n_max = largest_cluster if largest_cluster is not None else n
    cap = max_rows or default_rows(d)
    g = n_max if n_max <= cap else max(ROW_TILE, cap - COL_CHUNK) + COL_CHUNK  # out of core: rows + a column chunk
    m = min(n, max(10_000, 20 * k))
    trials = 2 + int(math.log(max(k, 1)))
    cluster = 12 * n + 2 * c * d * storage_bytes + c * d * 4 + c * k * 4 + k * d * 12 + m * d * (storage_bytes + 8) \
        + trials * m * 8
    order_rows = min(n, max_rows or max(1, ORDER_CHUNK_BYTES // (4 * max(d, 1))))
    order = order_rows * d * (storage_bytes + 8) + k * d * 8
    prune = order + 40 * n + g * d * (storage_bytes + 4 + 2) + ROW_TILE * COL_CHUNK * 4
    manifest = MANIFEST_BYTES_PER_SAMPLE * n
    return {"features": shard_size * d * 4, "cluster": cluster, "select": scores * 8 * n + 16 * n + manifest,
            "prune": prune + manifest, "manifest": manifest}


def format_bytes(b: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if b < 1024 or unit == "TiB":
            return f"{b:.0f} {unit}" if unit == "B" else f"{b:.1f} {unit}"
        b /= 1024
    return f"{b:.1f} TiB"


__all__ = ["estimate", "format_bytes"]
