"""FeatureSet: ids, features (N, k) float32 in memory, per-sample scores, skipped items; shards on disk."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._io import atomic_write


@dataclass
class FeatureSet:
    ids: list[Any]
    features: torch.Tensor  # float32 (N, k)
    scores: dict[str, torch.Tensor]  # name -> float32 (N,)
    skipped: list[tuple[Any, str]] = field(default_factory=list)  # (id, reason)
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def save_shard(self, path: Path, disk_dtype: str = "float16") -> None:
        """One shard = ``<path>.npy`` (features) + ``<path>.json`` (ids, scores, skipped, meta).
        The JSON is written last, so its presence marks a complete shard."""
        arr = self.features.cpu().numpy().astype(disk_dtype)
        atomic_write(path.with_suffix(".npy"), lambda f: np.save(f, arr))
        doc = {"ids": self.ids, "scores": {k: v.tolist() for k, v in self.scores.items()},
               "skipped": [list(s) for s in self.skipped], "meta": self.meta}
        atomic_write(path.with_suffix(".json"), lambda f: f.write(json.dumps(doc).encode()))

    @classmethod
    def load_shard(cls, path: Path) -> "FeatureSet":
        doc = json.loads(path.with_suffix(".json").read_text())
        feats = torch.from_numpy(np.load(path.with_suffix(".npy")).astype(np.float32))
        return cls(doc["ids"], feats, {k: torch.tensor(v, dtype=torch.float32) for k, v in doc["scores"].items()},
                   [tuple(s) for s in doc["skipped"]], doc["meta"])

    @classmethod
    def concat(cls, parts: list["FeatureSet"], meta: dict, out_dim: int) -> "FeatureSet":
        ids = [i for p in parts for i in p.ids]
        feats = torch.cat([p.features for p in parts]) if parts else torch.zeros(0, out_dim)
        names = parts[0].scores.keys() if parts else ()
        scores = {k: torch.cat([p.scores[k] for p in parts]) for k in names}
        return cls(ids, feats, scores, [s for p in parts for s in p.skipped], meta)
