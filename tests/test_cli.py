"""The ``adaptinf-fast`` command: ``info`` tells the truth, ``demo-ops`` finds what was planted."""

from __future__ import annotations

import json

from adaptinf_fast import cli
from adaptinf_fast.backends import cuda_extension


def test_info_reports_extension_and_backends(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert ("_C            built" in out) == (cuda_extension() is not None)
    for op in ("project", "kmeans_assign", "cluster_max_similarity"):
        assert op in out
        assert f"{op:<23} cpu     any    -> torch: CPU tensors" in out  # what auto takes, and why


def test_ops_demo_small_run_finds_planted_duplicates(tmp_path, capsys):
    assert cli.main(["demo-ops", "--out", str(tmp_path), "--n", "300", "--duplicates", "60", "--in-dim", "2048",
                     "--out-dim", "256", "--clusters", "4", "--budget", "250"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["pool_size"] == 360 and summary["budget_kept"] == 250
    caught, groups = map(int, summary["planted_groups_left_with_one_copy"].split("/"))
    assert groups > 0 and caught == groups
    assert "time per step" in capsys.readouterr().out
