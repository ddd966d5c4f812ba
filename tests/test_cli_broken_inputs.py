"""Every command with broken inputs (checkpoints, bundles, configs, data): one ``fusionrec: error:`` line
naming the input, exit code 2, no traceback, and nothing left half-written, not even after a kill."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import small_config, write_config
from fusionrec.cli import main
from fusionrec.data.synthetic import generate_impressions

FUSIONREC = str(Path(sys.executable).parent / "fusionrec")
LOG = {"rows": 3000, "users": 100, "items": 80, "seed": 0}
READ_ERROR = "not a readable checkpoint"
# Broken checkpoint -> what the error says about it.
CHECKPOINTS = {"empty": "the file is empty", "truncated": READ_ERROR, "random bytes": READ_ERROR,
               "text file": READ_ERROR, "directory": "is a directory", "missing": "no such checkpoint file"}
LIGHTNING = ("fit", "validate", "test", "predict")


def config(**model) -> dict:
    tiny = small_config(trainer={"max_epochs": 1, "logger": True, "enable_checkpointing": True})
    tiny["data"]["generate"] = LOG
    tiny["model"].update(model)
    return tiny


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One tiny checkpoint, one of another config (no 'like' task) under the same root, broken inputs."""
    root = tmp_path_factory.mktemp("broken")
    path = write_config(root, config())
    other = config()
    del other["model"]["tasks"]["like"]
    other_path = write_config(root, other, "other.yaml")
    for trained in (path, other_path):
        assert main(["fit", "--config", str(trained), "--trainer.default_root_dir", str(root / "runs")]) == 0
    runs = root / "runs" / "lightning_logs"
    checkpoint, other_checkpoint = (runs / f"version_{n}" / "checkpoints" / "last.ckpt" for n in (0, 1))
    broken = root / "broken"
    broken.mkdir()
    data = checkpoint.read_bytes()
    for name, content in {"empty": b"", "truncated": data[:len(data) // 2], "random bytes": os.urandom(4096),
                          "text file": b"model: {tasks: {}}\n"}.items():
        (broken / f"{name}.ckpt").write_bytes(content)
    (broken / "directory.ckpt").mkdir()
    (broken / "empty.csv").write_text("")
    (broken / "wrong columns.csv").write_text("a,b\n1,2\n")
    (broken / "not yaml.yaml").write_text("model: [tasks\n  click: {\n")
    (broken / "a list.yaml").write_text("- model\n- data\n")
    (broken / "empty bundle").mkdir()
    (broken / "not json bundle").mkdir()
    (broken / "not json bundle" / "manifest.json").write_text("{format: fusionrec-bundle")
    (broken / "empty run").mkdir()
    (broken / "not csv run").mkdir()
    (broken / "not csv run" / "metrics.csv").write_bytes(b"\x00\x01garbage\n")
    log = generate_impressions(**LOG)
    items = log.drop_duplicates("item_id")[["item_id", "item_category", "item_tags", "item_price", "item_embedding"]]
    items.to_parquet(root / "items.parquet")
    return {"root": root, "config": path, "checkpoint": checkpoint, "other config": other_path,
            "another config": other_checkpoint, "broken": broken}


def tree(root: Path) -> set[Path]:
    return set(root.rglob("*"))


def refused(capsys, root: Path, argv: list, *named: str) -> str:
    """Run ``fusionrec argv`` in-process and check the refusal; returns the error line."""
    before = tree(root)
    try:
        code = main([str(argument) for argument in argv])
    except SystemExit as exit_:  # an argument parser exiting on its own: also a failure below
        code = exit_.code
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("fusionrec: error:")]
    assert code == 2, err[-3000:]
    assert len(errors) == 1 and "Traceback" not in err, err[-3000:]
    for text in named:
        assert text in errors[0], errors[0]
    assert tree(root) == before, sorted(map(str, tree(root) - before))
    return errors[0]


def broken_checkpoint(world, kind: str) -> Path:
    return world["another config"] if kind == "another config" else world["broken"] / f"{kind}.ckpt"


def lightning(world, command: str, *arguments) -> list:
    return [command, *arguments, "--trainer.default_root_dir", world["root"] / "new runs"] + (
        ["--output", world["root"] / "out" / "scores.parquet"] if command == "predict" else [])


@pytest.mark.parametrize("kind", [*CHECKPOINTS, "another config"])
@pytest.mark.parametrize("command", LIGHTNING)
def test_lightning_commands_refuse_a_broken_checkpoint(world, capsys, monkeypatch, command, kind):
    monkeypatch.chdir(world["root"])  # anything written to the working directory shows in the tree
    checkpoint = broken_checkpoint(world, kind)
    said = CHECKPOINTS.get(kind, "trained with another config: model.tasks: like only in the config")
    refused(capsys, world["root"], lightning(world, command, "--config", world["config"], "--ckpt_path", checkpoint),
            f"--ckpt_path {checkpoint}", said)


@pytest.mark.parametrize("kind", CHECKPOINTS)
@pytest.mark.parametrize("command", ["export", "recommend", "evaluate-topk"])
def test_checkpoint_commands_refuse_a_broken_checkpoint(world, capsys, monkeypatch, command, kind):
    monkeypatch.chdir(world["root"])
    root, checkpoint, items = world["root"], broken_checkpoint(world, kind), world["root"] / "items.parquet"
    argv = {"export": ["--out", root / "out" / "bundle", "--no-onnx"],
            "recommend": ["--users", items, "--items", items, "--score", "{click: 1}", "--out", root / "out" / "r.pq"],
            "evaluate-topk": ["--users", items, "--items", items, "--score", "{click: 1}", "--train", items,
                              "--test", items, "--out", root / "out" / "metrics.json"]}[command]
    refused(capsys, root, [command, "--ckpt", checkpoint, *argv], f"--ckpt {checkpoint}", CHECKPOINTS[kind])


# Broken config -> a text from the config the error names.
CONFIGS = {"not yaml": ("not yaml.yaml", "config"), "a list": ("a list.yaml", "config"),
           "unknown key": ({"model": {"hidden_width": 8}}, "model.hidden_width"),
           "wrong type": ({"model": {"embedding_dim": "wide"}}, "model.embedding_dim"),
           "missing": ("no such config.yaml", "no such config.yaml")}


@pytest.mark.parametrize("kind", CONFIGS)
@pytest.mark.parametrize("command", LIGHTNING)
def test_lightning_commands_refuse_a_broken_config(world, capsys, monkeypatch, tmp_path, command, kind):
    monkeypatch.chdir(world["root"])
    change, named = CONFIGS[kind]
    if isinstance(change, str):
        path = world["broken"] / change
    else:
        edited = yaml.safe_load(world["config"].read_text())
        for section, values in change.items():
            edited[section].update(values)
        path = write_config(tmp_path, edited)
    refused(capsys, world["root"], lightning(world, command, "--config", path, "--ckpt_path", world["checkpoint"]),
            named)


# Broken data file -> what the error says about it.
DATA = {"missing": "file not found", "empty": "is empty", "wrong columns": "no column"}


def data_file(world, kind: str) -> Path:
    return world["broken"] / ("no such log.csv" if kind == "missing" else f"{kind}.csv")


@pytest.mark.parametrize("kind", DATA)
@pytest.mark.parametrize("command", ["fit", "predict"])
def test_lightning_commands_refuse_broken_data(world, capsys, monkeypatch, tmp_path, command, kind):
    """fit reads the file as its log (a failed start leaves no run directory), predict as the rows to score."""
    monkeypatch.chdir(world["root"])
    edited = config()
    if command == "fit":
        del edited["data"]["generate"]
        edited["data"]["path"] = str(data_file(world, kind))
    else:
        edited["data"]["predict"] = str(data_file(world, kind))
    argv = ["--config", write_config(tmp_path, edited)] + (["--ckpt_path", world["checkpoint"]] if command == "predict"
                                                            else [])
    refused(capsys, world["root"], lightning(world, command, *argv), str(data_file(world, kind)), DATA[kind])


@pytest.mark.parametrize("kind", DATA)
@pytest.mark.parametrize("command", ["recommend", "evaluate-topk"])
def test_catalogue_commands_refuse_broken_data(world, capsys, monkeypatch, command, kind):
    monkeypatch.chdir(world["root"])
    root, items, users = world["root"], world["root"] / "items.parquet", data_file(world, kind)
    argv = [command, "--ckpt", world["checkpoint"], "--users", users, "--items", items, "--score", "{click: 1}"]
    argv += ["--out", root / "out" / "r.pq"] if command == "recommend" else ["--train", items, "--test", items]
    refused(capsys, root, argv, "--users", str(users), DATA[kind])


@pytest.mark.parametrize("bundle", ["no such bundle", "empty bundle", "not json bundle"])
def test_serve_refuses_a_broken_bundle(world, capsys, bundle):
    refused(capsys, world["root"], ["serve", world["broken"] / bundle], str(world["broken"] / bundle))


@pytest.mark.parametrize("run", ["no such run", "empty run", "not csv run"])
def test_report_refuses_a_broken_run_directory(world, capsys, run):
    refused(capsys, world["root"], ["report", world["broken"] / run], str(world["broken"] / run))


@pytest.mark.parametrize("command", ["plugins", "report", "export", "serve", "recommend", "evaluate-topk"])
def test_own_commands_refuse_unknown_arguments(world, capsys, command):
    refused(capsys, world["root"], [command, "--no-such-option"], f"fusionrec {command}")


def drop_hour(edited: dict) -> None:
    del edited["data"]["features"]["hour"]


def user_age_categorical(edited: dict) -> None:
    edited["data"]["features"]["user_age"] = {"type": "categorical"}


def no_scenario(edited: dict) -> None:
    edited["data"]["scenario"] = None


def longer_tag_lists(edited: dict) -> None:
    edited["data"]["features"]["item_tags"]["max_length"] = 8


def wider_embeddings(edited: dict) -> None:
    edited["model"]["embedding_dim"] = 16


@pytest.mark.parametrize("change, named", [
    (drop_hour, "data.features: hour only in the checkpoint"),
    (user_age_categorical, "data.features.user_age is 'numeric' in the checkpoint, 'categorical' in the config"),
    (no_scenario, "data.scenario is 'scenario' in the checkpoint, None in the config"),
    (longer_tag_lists, "data.features.item_tags.max_length is 4 in the checkpoint, 8 in the config"),
    (wider_embeddings, "model.embedding_dim is 8 in the checkpoint, 16 in the config"),
])
def test_a_checkpoint_of_another_config_names_what_differs(world, capsys, tmp_path, change, named):
    edited = yaml.safe_load(world["config"].read_text())
    change(edited)
    refused(capsys, world["root"], lightning(world, "test", "--config", write_config(tmp_path, edited),
                                             "--ckpt_path", world["checkpoint"]), "trained with another config", named)


def test_training_settings_may_differ_from_the_checkpoint(world, capsys, tmp_path):
    """A learning rate or task weight only shapes training: the checkpoint is tested under the new values;
    a component named by its default builds the same model as one left unset."""
    edited = yaml.safe_load(world["config"].read_text())
    assert "fusion" not in edited["model"] and "balancer" not in edited["model"]
    edited["model"].update(fusion={"name": "concat"}, balancer={"name": "fixed"})
    edited["model"]["learning_rate"] = 0.1
    edited["model"]["tasks"]["click"]["weight"] = 3.0
    assert main(["test", "--config", str(write_config(tmp_path, edited)), "--ckpt_path", str(world["checkpoint"]),
                 "--trainer.default_root_dir", str(tmp_path / "runs")]) == 0
    assert "test metrics" in capsys.readouterr().out


def test_ckpt_path_last_takes_the_newest_checkpoint_of_this_config(world, capsys):
    """Under a root holding this config's last.ckpt and a newer one of another config, ``last`` is this
    config's; with only other configs' there, an error names the newest and what differs."""
    root = world["root"]
    assert main(["test", "--config", str(world["config"]), "--ckpt_path", "last",
                 "--trainer.default_root_dir", str(root / "runs")]) == 0
    assert f"using {world['checkpoint']}" in capsys.readouterr().out
    shared_bottom = write_config(root / "broken", config(trunk={"name": "shared_bottom"}), "shared_bottom.yaml")
    error = refused(capsys, root, ["fit", "--config", shared_bottom, "--ckpt_path", "last",
                                   "--trainer.default_root_dir", root / "runs"],
                    f"--ckpt_path last: {world['another config']} was trained with another config than "
                    f"{shared_bottom}", "model.trunk")
    assert "model.tasks: like only in the config" in error


def test_ckpt_path_last_passes_over_an_unreadable_newer_checkpoint(world, capsys, tmp_path):
    """A last.ckpt cut short by a kill is newest, but this config's older one is taken."""
    kept, cut = (tmp_path / "runs" / name / "checkpoints" / "last.ckpt" for name in ("version_0", "version_1"))
    for path in (kept, cut):
        path.parent.mkdir(parents=True)
    shutil.copy(world["checkpoint"], kept)
    cut.write_bytes(world["checkpoint"].read_bytes()[:1000])
    assert main(["test", "--config", str(world["config"]), "--ckpt_path", "last",
                 "--trainer.default_root_dir", str(tmp_path / "runs")]) == 0
    assert f"using {kept}" in capsys.readouterr().out


def start_export(world, out: Path) -> subprocess.Popen:
    return subprocess.Popen([FUSIONREC, "export", "--ckpt", str(world["checkpoint"]), "--out", str(out),
                             "--no-onnx", "--skip-test-metrics"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_a_killed_export_leaves_no_staging_directory(world, tmp_path):
    """SIGTERM while staging: the staging directory is removed and --out never appears. SIGKILL leaves it
    (nothing runs), and the next export next to it removes it."""
    terminated, killed = tmp_path / "terminated", tmp_path / "killed"
    processes = {signal.SIGTERM: (start_export(world, terminated), terminated),
                 signal.SIGKILL: (start_export(world, killed), killed)}
    try:
        deadline = time.monotonic() + 120
        for number, (process, out) in processes.items():
            while not list(tmp_path.glob(f".{out.name}.partial-*")):
                assert process.poll() is None and time.monotonic() < deadline, process.communicate()
                time.sleep(0.02)
            process.send_signal(number)
        (term, _), (kill, _) = processes.values()
        _, err = term.communicate(timeout=120)
    finally:  # never leave an export running when an assertion above fails
        for process, _ in processes.values():
            if process.poll() is None:
                process.kill()
    assert term.returncode == 128 + signal.SIGTERM and "Traceback" not in err, err[-3000:]
    kill.wait(timeout=120)
    left = {path.name for path in tmp_path.iterdir()}
    assert not terminated.exists() and not any(name.startswith(".terminated.") for name in left)
    assert not killed.exists() and any(name.startswith(".killed.partial-") for name in left)
    assert main(["export", "--ckpt", str(world["checkpoint"]), "--out", str(killed), "--no-onnx",
                 "--skip-test-metrics"]) == 0
    assert {path.name for path in tmp_path.iterdir()} == {"killed"}
    assert (killed / "manifest.json").is_file()
