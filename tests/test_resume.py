"""Surviving a crash: the last checkpoint is written atomically, and a training process killed mid-run
and restarted with ``--ckpt_path last`` ends where an uninterrupted run does."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from conftest import SMALL_LOG, small_config, write_config

FUSIONREC = str(Path(sys.executable).parent / "fusionrec")


def config_file(root: Path) -> Path:
    config = small_config(trainer={"max_epochs": 3, "logger": True, "enable_checkpointing": True})
    config["data"]["generate"] = {**SMALL_LOG, "rows": 15000}
    config["data"]["shuffle_seed"] = 5  # the same permutation per epoch before and after a restart
    root.mkdir()
    return write_config(root, config)


def fit(root: Path, output: str, *arguments: str) -> subprocess.Popen:
    """``fusionrec fit`` writing its output, unbuffered, to ``root/output``: what it printed is there even
    after a SIGKILL, and no pipe fills up while another run is awaited."""
    with (root / output).open("w") as log:  # the child keeps its own copy of the file descriptor
        return subprocess.Popen([FUSIONREC, "fit", "--config", str(root / "config.yaml"),
                                 "--trainer.default_root_dir", str(root), *arguments],
                                stdout=log, stderr=subprocess.STDOUT, cwd=root,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})


def final_test_metrics(root: Path) -> dict[str, float]:
    newest = max(root.glob("**/metrics.csv"), key=lambda path: path.stat().st_mtime)
    rows = [row for row in csv.DictReader(newest.open()) if row.get("test/click/auc")]
    return {key: float(value) for key, value in rows[-1].items() if key.startswith("test/") and value}


def test_a_killed_run_resumed_from_last_ends_like_an_uninterrupted_one(tmp_path):
    # The uninterrupted run and the one to be killed run side by side (results do not depend on timing).
    uninterrupted, crashed = tmp_path / "uninterrupted", tmp_path / "crashed"
    config_file(uninterrupted), config_file(crashed)
    reference = fit(uninterrupted, "fit.txt")
    # --ckpt_path last before any checkpoint exists: a fresh start.
    process = fit(crashed, "first.txt", "--ckpt_path", "last")
    deadline = time.monotonic() + 300
    while not list(crashed.glob("**/checkpoints/last.ckpt")):  # the end of the first epoch
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert f"no last.ckpt under {crashed}: starting from scratch" in (crashed / "first.txt").read_text()
    (last,) = crashed.glob("**/checkpoints/last.ckpt")
    killed_at = torch.load(last, map_location="cpu", weights_only=True)["epoch"]
    assert killed_at < 2  # killed before the run's end

    resumed = fit(crashed, "resumed.txt", "--ckpt_path", "last")
    for run, output in ((reference, uninterrupted / "fit.txt"), (resumed, crashed / "resumed.txt")):
        assert run.wait(timeout=600) == 0, output.read_text()[-3000:]
    assert f"resuming from {last}" in (crashed / "resumed.txt").read_text()
    expected, got = final_test_metrics(uninterrupted), final_test_metrics(crashed)
    # With data.shuffle_seed the resumed epochs draw the batches the uninterrupted run drew: every test
    # metric matches (measured identical; asserted within 1e-6).
    assert expected.keys() == got.keys()
    for name, value in expected.items():
        assert abs(got[name] - value) < 1e-6, (name, got[name], value)


def test_a_crash_while_writing_a_checkpoint_leaves_the_previous_one_intact(tmp_path):
    """The trainer's checkpoint writer, killed (os._exit) halfway through writing over last.ckpt."""
    last = tmp_path / "last.ckpt"
    script = f"""
import os, torch
from fsspec.implementations.local import LocalFileOpener
from lightning.pytorch import Trainer
io = Trainer(logger=False).strategy.checkpoint_io
io.save_checkpoint({{"epoch": 1, "weights": torch.zeros(3)}}, {str(last)!r})
write = LocalFileOpener.write
def dying(self, data):
    write(self, bytes(data)[:len(data) // 2])
    self.flush()
    os._exit(9)
LocalFileOpener.write = dying
io.save_checkpoint({{"epoch": 2, "weights": torch.ones(100000)}}, {str(last)!r})
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 9, result.stderr[-2000:]
    kept = torch.load(last, map_location="cpu", weights_only=True)
    assert kept["epoch"] == 1 and torch.equal(kept["weights"], torch.zeros(3))
