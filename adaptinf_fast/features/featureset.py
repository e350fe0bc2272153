"""FeatureSet: ids, features (N, k), per-sample scores, skipped items; shards on disk.

``features`` is a float32 tensor in memory, or (``lazy`` loading) a ``FeatureView`` over the
shards' 16-bit files: nothing of it is read until a consumer asks for rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch

from .._io import atomic_write
from ..featureview import FeatureView, Segment, open_array, to_storage

Features = Union[torch.Tensor, FeatureView]


@dataclass
class FeatureSet:
    ids: list[Any]
    features: Features  # float32 (N, k) tensor, or a FeatureView over 16-bit files
    scores: dict[str, torch.Tensor]  # name -> float32 (N,)
    skipped: list[tuple[Any, str]] = field(default_factory=list)  # (id, reason)
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def save_shard(self, path: Path, disk_dtype: str = "float16") -> None:
        """One shard = ``<path>.npy`` (features in ``disk_dtype``: float16, bfloat16 as its 16-bit
        words, or float32) + ``<path>.json`` (ids, scores, skipped, meta, dtype). The JSON is
        written last, so its presence marks a complete shard."""
        arr = to_storage(torch.as_tensor(self.features), disk_dtype)
        atomic_write(path.with_suffix(".npy"), lambda f: np.save(f, arr))
        doc = {"ids": self.ids, "scores": {k: v.tolist() for k, v in self.scores.items()},
               "skipped": [list(s) for s in self.skipped], "meta": self.meta, "dtype": disk_dtype}
        atomic_write(path.with_suffix(".json"), lambda f: f.write(json.dumps(doc).encode()))

    @staticmethod
    def shard_meta(path: Path) -> dict:
        """A shard's featurizer configuration, without reading its features."""
        return json.loads(path.with_suffix(".json").read_text())["meta"]

    @classmethod
    def load_shard(cls, path: Path, lazy: bool = False) -> "FeatureSet":
        """A shard; ``lazy``: its features as a memory-mapped ``FeatureView`` (storage dtype)."""
        doc = json.loads(path.with_suffix(".json").read_text())
        npy = path.with_suffix(".npy")
        dtype = doc.get("dtype", "float16")
        if lazy:
            feats: Features = FeatureView([Segment(open_array(npy), dtype, None, npy)])
        else:
            feats = FeatureView([Segment(open_array(npy), dtype, None, npy)]).to_tensor(torch.float32)
        return cls(doc["ids"], feats, {k: torch.tensor(v, dtype=torch.float32) for k, v in doc["scores"].items()},
                   [tuple(s) for s in doc["skipped"]], doc["meta"])

    @classmethod
    def concat(cls, parts: list["FeatureSet"], meta: dict, out_dim: int) -> "FeatureSet":
        """One set from ``parts`` in order; lazy parts give one view over all their files."""
        ids = [i for p in parts for i in p.ids]
        if parts and all(isinstance(p.features, FeatureView) for p in parts):
            feats: Features = FeatureView([s for p in parts for s in p.features.segments])
        else:
            feats = (torch.cat([torch.as_tensor(p.features) if not isinstance(p.features, FeatureView)
                                else p.features.to_tensor() for p in parts]) if parts else torch.zeros(0, out_dim))
        names = parts[0].scores.keys() if parts else ()
        scores = {k: torch.cat([p.scores[k] for p in parts]) for k in names}
        return cls(ids, feats, scores, [s for p in parts for s in p.skipped], meta)
