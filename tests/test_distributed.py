"""Distributed training: batches shared out between processes, preprocessing fitted once, and a real
two-process DDP run (gloo, CPU) that ends with the metrics of a single-process run."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import SMALL_LOG, small_config, write_config

from fusionrec.data.batches import BatchIndices, DistributedBatches, GroupedBatchIndices
from fusionrec.data.datamodule import MultiTaskDataModule
from fusionrec.data.preprocessing import Preprocessor


def shares(batches, world: int, pad: bool, epoch: int = 0) -> list[list[torch.Tensor]]:
    samplers = [DistributedBatches(batches, world, rank, pad) for rank in range(world)]
    for sampler in samplers:
        sampler.set_epoch(epoch)
    return [list(sampler) for sampler in samplers]


@pytest.mark.parametrize("make", [lambda shuffle: BatchIndices(1003, 100, shuffle, seed=3),
                                  lambda shuffle: GroupedBatchIndices(torch.tensor([7, 1, 30, 2] * 25), 50, shuffle, seed=3)],
                         ids=["rows", "groups"])
def test_evaluation_counts_every_row_once_and_training_pads_to_equal_steps(make):
    rows = int(sum(len(b) for b in make(False)))
    evaluation = shares(make(False), 2, pad=False)
    seen = torch.cat([b for share in evaluation for b in share])
    assert sorted(seen.tolist()) == list(range(rows))  # every row once, none twice
    training = shares(make(True), 3, pad=True)
    assert len({len(share) for share in training}) == 1  # every process runs the same number of steps
    trained = torch.cat([b for share in training for b in share])
    assert set(trained.tolist()) == set(range(rows))  # every row at least once
    assert len(training[0]) == len(DistributedBatches(make(True), 3, 0, pad=True))


def test_processes_draw_the_same_permutation_each_epoch_and_a_new_one_per_epoch():
    first, second = shares(BatchIndices(500, 50, True, seed=3), 2, pad=True, epoch=0)
    again = shares(BatchIndices(500, 50, True, seed=3), 2, pad=True, epoch=0)
    # Rank 1 got the batches rank 0 did not: their union is the permutation, the same in every process.
    assert not set(torch.cat(first).tolist()) & set(torch.cat(second).tolist())
    assert all(torch.equal(a, b) for a, b in zip(first, again[0]))
    next_epoch = shares(BatchIndices(500, 50, True, seed=3), 2, pad=True, epoch=1)[0]
    assert not torch.equal(torch.cat(first), torch.cat(next_epoch))


def test_only_rank_zero_fits_the_vocabularies_the_others_receive_them(monkeypatch):
    config = small_config()
    data = dict(config["data"], generate={**SMALL_LOG, "rows": 3000})
    fitted = []
    real_fit = Preprocessor.fit.__func__

    def counting_fit(cls, *args, **kwargs):
        fitted.append(True)
        return real_fit(cls, *args, **kwargs)

    monkeypatch.setattr(Preprocessor, "fit", classmethod(counting_fit))
    sent = {}

    def broadcast(state, src=0):
        if "state" not in sent:  # rank 0's call: remember what it sends
            sent["state"] = state
        return sent["state"]

    states = []
    for rank in (0, 1):
        module = MultiTaskDataModule(tasks=config["model"]["tasks"], **data)
        module.trainer = SimpleNamespace(world_size=2, global_rank=rank, lightning_module=None,
                                         strategy=SimpleNamespace(broadcast=broadcast))
        module.setup("fit")
        states.append(module.preprocessor.state)
    assert len(fitted) == 1
    assert states[0] == states[1]


def test_metrics(run_dir: Path) -> dict[str, float]:
    (metrics_csv,) = run_dir.glob("**/metrics.csv")
    rows = [row for row in csv.DictReader(metrics_csv.open()) if row.get("test/click/auc")]
    return {key: float(value) for key, value in rows[-1].items() if key.startswith("test/") and value}


test_metrics.__test__ = False  # a helper, not a test


def fit(root: Path, batch_size: int, *ddp_arguments: str, graph: bool = False) -> dict[str, float]:
    config = small_config(trainer={"max_epochs": 3, "logger": True, "enable_checkpointing": True})
    config["data"].update(batch_size=batch_size, shuffle_seed=11)
    if graph:  # LightGCN ids: each process propagates its own copy of the graph (extra state, not broadcast)
        edges = {"user": "user_id", "item": "item_id", "positive": {"column": "click"}}
        config["model"]["encoders"] = {field: {"name": "lightgcn", "graph": edges, "layers": 2}
                                       for field in ("user_id", "item_id")}
    root.mkdir()
    path = write_config(root, config)
    command = [str(Path(sys.executable).parent / "fusionrec"), "fit", "--config", str(path),
               "--trainer.default_root_dir", str(root), *ddp_arguments]
    result = subprocess.run(command, capture_output=True, text=True, cwd=root, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return test_metrics(root)


@pytest.mark.parametrize("graph", [False, True], ids=["tabular", "lightgcn"])
def test_two_process_ddp_on_cpu_matches_a_single_process_run(tmp_path, graph):
    """Two gloo processes with batches of 256 against one process with batches of 512, both shuffling
    with data.shuffle_seed: each DDP step averages the gradients of the two 256-row halves of the
    single process's 512-row batch, so both runs take the same steps up to floating-point order (and
    the per-task losses of rows split unevenly between the halves): measured 0.0004 apart in AUC and
    0.12% in RMSE; asserted within 0.003 and 1%."""
    single = fit(tmp_path / "single", 512, graph=graph)
    ddp = fit(tmp_path / "ddp", 256, "--trainer.accelerator", "cpu", "--trainer.devices", "2",
              "--trainer.strategy", "ddp", graph=graph)
    for task in ("click", "like"):
        assert abs(ddp[f"test/{task}/auc"] - single[f"test/{task}/auc"]) < 0.003, (ddp, single)
    assert abs(ddp["test/watch_time/rmse"] / single["test/watch_time/rmse"] - 1) < 0.01, (ddp, single)
