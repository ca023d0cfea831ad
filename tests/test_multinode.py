"""Work spreads over the nodes of a cluster: on Ray's multi-node test cluster (tests/multinode_run.py,
in its own process) scorer actors and training workers run on every node and give what one node
gives, and a node that joins while scoring runs gets work. Slow (a cluster of four raylets and two
DeepSpeed workers on a 2-core box): `make reliability` runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_scoring_stage import in_process, make_rows, tiny_config, write_rows
from test_training import write_rows as write_training_rows

pytestmark = pytest.mark.reliability
HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def cluster_run(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("multinode")
    rows = write_rows(tmp / "rows.parquet", make_rows(30))
    big = write_rows(tmp / "big.parquet", make_rows(3000))
    train_rows = write_training_rows(tmp / "train-rows.parquet")
    done = subprocess.run([sys.executable, str(HERE / "multinode_run.py"), str(tiny_model_dir), str(rows), str(big),
                           str(train_rows), str(tmp / "out")], capture_output=True, text=True, timeout=1500,
                          cwd=HERE.parent)
    assert done.returncode == 0, done.stderr[-5000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_scorer_actors_run_on_every_node_and_score_as_in_process(cluster_run, tiny_model_dir):
    scoring = cluster_run["scoring"]
    assert len(cluster_run["nodes"]) == 3 and scoring["nodes"] == cluster_run["nodes"], scoring["summary"]
    assert scoring["actors"] == scoring["summary"]["actors_used"] == 3  # one per node, each did work
    expected = in_process(tiny_model_dir, make_rows(30), tiny_config())
    assert sorted(scoring["ifd"]) == sorted(expected)
    for i, ifd in scoring["ifd"].items():
        assert (ifd is None) == (expected[i]["ifd"] is None)
        if ifd is not None:
            assert ifd == pytest.approx(expected[i]["ifd"], abs=1e-4)


def test_training_workers_run_on_two_nodes_and_train_as_on_one(cluster_run, tiny_model_dir, ray_session,
                                                               tmp_path):
    import torch
    from multinode_run import training_config
    from safetensors.torch import load_file

    from raysel.training import total_steps, train_round

    spread = cluster_run["training"]
    assert len(set(spread["worker_nodes"])) == 2  # one worker per node: each node has one CPU
    cfg = training_config()
    ids = [f"row-{i:02d}" for i in range(0, 14, 2)]
    rows = write_training_rows(tmp_path / "rows.parquet")
    local = train_round(cfg, rows, ids, tmp_path / "run", 0, str(tiny_model_dir), total_steps(len(ids), 1, cfg.training))
    assert len(set(local["worker_nodes"])) == 1
    assert spread["steps"] == local["steps"] and np.allclose(spread["losses"], local["losses"], rtol=1e-5)
    a = load_file(str(Path(spread["checkpoint"]) / "adapter_model.safetensors"))
    b = load_file(str(Path(local["checkpoint"]) / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_a_node_that_joins_while_scoring_runs_gets_work(cluster_run):
    joining = cluster_run["joining"]
    seen = {k: v for k, v in joining.items() if k != "ifd"}
    assert joining["new_node"] and joining["new_node"] in joining["nodes"], seen
    assert joining["actors"] == joining["summary"]["actors_used"] == 4, seen  # the new node's actor scored
    assert joining["summary"]["scored"] + joining["summary"]["invalid"] == sum(
        r["status"] == "valid" for r in make_rows(3000))
