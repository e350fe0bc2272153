"""Streaming from a memmap equals the in-memory fit; two gloo ranks equal one process on the union."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from sklearn.datasets import make_blobs

import adaptinf_fast as af
from adaptinf_fast.ops.kmeans import lloyd


def blobs(n=3000, d=16, seed=0):
    x, _ = make_blobs(n, d, centers=12, cluster_std=2.5, random_state=seed)
    return x.astype(np.float32)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_memmap_streamed_in_chunks_equals_in_memory(metric, tmp_path, monkeypatch):
    x = blobs()
    mm = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float16, shape=x.shape)
    mm[:] = x
    mm.flush()
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    whole = af.KMeans(12, metric=metric, seed=1).fit(torch.from_numpy(np.array(mm)))
    monkeypatch.setattr(lloyd, "CHUNK_BYTES", 4 * 16 * 257)  # 257-row chunks
    streamed = af.KMeans(12, metric=metric, seed=1).fit(mm)
    assert isinstance(streamed.labels_, np.ndarray)
    assert np.array_equal(streamed.labels_, whole.labels_.numpy())
    np.testing.assert_allclose(streamed.cluster_centers_, whole.cluster_centers_.numpy(), rtol=1e-5, atol=1e-6)
    assert streamed.inertia_ == pytest.approx(whole.inertia_, rel=1e-6)


def _worker(rank, world, port, shards, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        km = af.KMeans(12, seed=3, n_init=2).fit(shards[rank])
        torch.save({"centers": km.cluster_centers_, "labels": km.labels_, "inertia": km.inertia_}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_equal_one_process_on_the_union(tmp_path):
    x = torch.from_numpy(blobs(2001))
    shards = [x[:1234], x[1234:]]  # unequal shards
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_worker, args=(2, port, shards, str(tmp_path / "r")), nprocs=2, join=True, start_method="spawn")
    single = af.KMeans(12, seed=3, n_init=2).fit(x)
    got = [torch.load(f"{tmp_path / 'r'}.{r}") for r in range(2)]
    for g in got:
        torch.testing.assert_close(g["centers"], single.cluster_centers_, rtol=1e-5, atol=1e-5)
        assert g["inertia"] == pytest.approx(single.inertia_, rel=1e-6)
    assert torch.equal(torch.cat([got[0]["labels"], got[1]["labels"]]), single.labels_)
