"""Two gloo processes on CPU: each featurises its shards; every rank gets the FeatureSet in data order."""

from __future__ import annotations

import os
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

HERE = os.path.dirname(__file__)


def _worker(rank: int, world: int, port: int, out_dir: str | None, result_path: str):
    sys.path.insert(0, HERE)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        import adaptinf_fast as af
        from tiny_models import random_rows, tiny_llama

        rows = random_rows(11, torch.Generator().manual_seed(5))
        fz = af.GradientFeaturizer(tiny_llama(), layers="all", out_dim=48)
        fs = fz.extract(rows, batch_size=2, shard_size=4, out_dir=out_dir, progress=False)
        torch.save({"ids": fs.ids, "features": fs.features, "ppl": fs.scores["ppl"]}, f"{result_path}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("on_disk", [False, True], ids=["in-memory", "shards-on-disk"])
def test_two_ranks_equal_one_process(on_disk, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out_dir = str(tmp_path / "shards") if on_disk else None
    mp.start_processes(_worker, args=(2, port, out_dir, str(tmp_path / "res")), nprocs=2, join=True, start_method="spawn")
    sys.path.insert(0, HERE)
    import adaptinf_fast as af
    from tiny_models import random_rows, tiny_llama

    rows = random_rows(11, torch.Generator().manual_seed(5))
    single = af.GradientFeaturizer(tiny_llama(), layers="all", out_dim=48).extract(rows, batch_size=2, progress=False)
    for rank in range(2):
        got = torch.load(f"{tmp_path / 'res'}.{rank}")
        assert got["ids"] == single.ids
        tol = 1e-3 if on_disk else 1e-5  # shards store float16 by default
        torch.testing.assert_close(got["features"], single.features, rtol=0, atol=tol)
        torch.testing.assert_close(got["ppl"], single.scores["ppl"], rtol=1e-5, atol=0)
