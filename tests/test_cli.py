"""The fusionrec command: fit, test, predict, print_config, overrides, and what checkpoints hold."""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np

import pandas as pd
import pytest
import torch
import yaml

from conftest import small_config, write_config
from fusionrec.cli import main


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short quickstart-shaped fit through the CLI: (config path, checkpoint path, run dir)."""
    root = tmp_path_factory.mktemp("cli")
    config = small_config(trainer={"max_epochs": 2, "logger": True, "enable_checkpointing": True})
    path = write_config(root, config)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["fit", "--config", str(path), "--trainer.default_root_dir", str(root / "runs")]) == 0
    run = root / "runs" / "lightning_logs" / "version_0"
    (run / "fit_output.txt").write_text(printed.getvalue())
    (checkpoint,) = (run / "checkpoints").glob("epoch=*.ckpt")
    return path, checkpoint, run


def test_fit_saves_the_resolved_config_next_to_the_logs(trained):
    _, _, run = trained
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["trunk"]["name"] == "mmoe"
    logged = (run / "metrics.csv").read_text()
    assert "val/click/auc" in logged and "train/click/loss" in logged


def test_checkpoints_are_plain_data(trained):
    _, checkpoint, _ = trained
    loaded = torch.load(checkpoint, weights_only=True)
    preprocessing = loaded["hyper_parameters"]["preprocessing"]
    assert len(preprocessing["features"]["user_id"]["vocabulary"]) > 100
    assert {"mean", "std"} <= set(preprocessing["features"]["user_age"])
    assert loaded["fusionrec"]["components"]["trunk"] == {
        "name": "mmoe", "plugin": "trunks", "distribution": "fusionrec", "version": loaded["fusionrec"]["version"]}


def test_test_subcommand_prints_a_per_task_table(trained, capsys):
    path, checkpoint, _ = trained
    assert main(["test", "--config", str(path), "--ckpt_path", str(checkpoint)]) == 0
    out = capsys.readouterr().out
    assert "test metrics" in out
    for task in ("click", "like", "watch_time"):
        assert task in out


def test_predict_writes_every_row_to_parquet(trained, tmp_path):
    path, checkpoint, _ = trained
    output = tmp_path / "scores.parquet"
    assert main(["predict", "--config", str(path), "--ckpt_path", str(checkpoint), "--output", str(output)]) == 0
    scores = pd.read_parquet(output)
    assert len(scores) == 3000  # the 10% test split of the 30k-row log
    assert {"user_id", "item_id", "click", "like", "watch_time"} <= set(scores.columns)
    assert scores["click"].between(0, 1).all() and scores["click"].std() > 0.01
    assert not list(tmp_path.glob("*.partial"))


def test_a_checkpoint_rebuilds_in_a_fresh_process_without_config_or_data(trained, tmp_path):
    path, checkpoint, _ = trained
    output = tmp_path / "scores.parquet"
    assert main(["predict", "--config", str(path), "--ckpt_path", str(checkpoint), "--output", str(output)]) == 0
    expected = pd.read_parquet(output).head(50)
    raw = tmp_path / "raw.parquet"
    from fusionrec.data.synthetic import generate_impressions
    # The same rows as the first 50 of the test split, rebuilt from the generator's parameters.
    log = generate_impressions(**yaml.safe_load(path.read_text())["data"]["generate"])
    log.iloc[-3000:].head(50).to_parquet(raw)
    script = f"""
import json, pandas as pd, torch
from fusionrec.training.module import MultiTaskModule
from fusionrec.data.preprocessing import Preprocessor
from fusionrec.plugins import get_registry
model = MultiTaskModule.load_from_checkpoint({str(checkpoint)!r}, map_location="cpu").eval()
table = Preprocessor(model.hparams.preprocessing).transform(pd.read_parquet({str(raw)!r}), get_registry(),
                                                            with_labels=False)
with torch.no_grad():
    outputs = model(table[list(range(len(table)))].features)
print(json.dumps({{task: model.model.heads[task].predict(out).tolist() for task, out in outputs.items()}}))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                            env={**__import__("os").environ, "FUSIONREC_CACHE_DIR": str(tmp_path / "empty")})
    assert result.returncode == 0, result.stderr
    predicted = json.loads(result.stdout.strip().splitlines()[-1])
    for task in ("click", "like", "watch_time"):
        assert predicted[task] == pytest.approx(expected[task].tolist(), abs=1e-5)


def test_print_config_resolves_interpolation_and_overrides(tmp_path, capsys):
    config = small_config()
    config["model"]["trunk"] = {"name": "mmoe", "expert_hidden": ["${model.embedding_dim}"]}
    path = write_config(tmp_path, config)
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(path), "--model.embedding_dim", "24", "--print_config"])
    assert exit_.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["embedding_dim"] == 24
    assert printed["model"]["trunk"]["expert_hidden"] == [8]  # interpolated in the file, before the override


def test_fit_stops_early_and_tests_the_best_epoch(tmp_path):
    # A large learning rate on the small log overfits the id embeddings within a few epochs.
    config = small_config(trainer={"max_epochs": 15, "logger": True})
    del config["trainer"]["enable_checkpointing"]  # fit's default callbacks: early stopping + best checkpoint
    config["model"]["learning_rate"] = 0.02
    path = write_config(tmp_path, config)
    assert main(["fit", "--config", str(path), "--trainer.default_root_dir", str(tmp_path)]) == 0
    fit_run = tmp_path / "lightning_logs" / "version_0"
    logged = pd.read_csv(fit_run / "metrics.csv")
    validation = logged.dropna(subset=["val/loss"])
    assert validation["epoch"].max() < 14  # stopped (patience 4) before the budget ran out
    best_epoch = int(validation.loc[validation["val/loss"].idxmin(), "epoch"])
    (best,) = (fit_run / "checkpoints").glob("epoch=*.ckpt")
    assert best.name.startswith(f"epoch={best_epoch}-") and (fit_run / "checkpoints" / "last.ckpt").exists()
    # The test run at the end of fit scored the best checkpoint, not the last weights.
    assert main(["test", "--config", str(path), "--ckpt_path", str(best),
                 "--trainer.default_root_dir", str(tmp_path)]) == 0
    retested = pd.read_csv(tmp_path / "lightning_logs" / "version_1" / "metrics.csv")
    assert logged["test/loss"].dropna().item() == pytest.approx(retested["test/loss"].dropna().item(), rel=1e-6)


def test_package_path_interpolation_points_into_an_installed_package(tmp_path, capsys):
    """``${package_path:pkg,sub}`` resolves to a directory of an installed package (how
    configs/movielens-text.yaml finds the MiniLM weights); a missing package is named."""
    import fusionrec_tabular

    config = small_config()
    config["data"]["predict"] = "${package_path:fusionrec_tabular,encoders.py}"
    def exit_code(argv):
        try:
            return main(argv)
        except SystemExit as done:  # --print_config exits once it has printed
            return done.code

    path = write_config(tmp_path, config)
    assert exit_code(["fit", "--config", str(path), "--print_config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["predict"] == str(Path(fusionrec_tabular.__file__).parent / "encoders.py")
    config["data"]["predict"] = "${package_path:no_such_package_xyz,model}"
    assert exit_code(["fit", "--config", str(write_config(tmp_path, config)), "--print_config"]) == 2
    assert "no_such_package_xyz" in capsys.readouterr().err


def test_fit_prints_a_line_per_epoch_and_the_full_table_once_for_the_tested_checkpoint(trained):
    _, checkpoint, run = trained
    out = (run / "fit_output.txt").read_text()
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:1] == ["epoch"])
    names = re.split(r"\s{2,}", lines[header].strip())
    assert names == ["epoch", "val/loss", "click auc", "like auc", "watch_time rmse"]  # each head's primary metric
    epochs = [line.split() for line in lines[header + 1:header + 3]]
    assert [row[0] for row in epochs] == ["0", "1"]
    # '*' on each epoch whose val/loss beats every earlier one; the last of them is the checkpoint tested.
    losses = [float(row[1]) for row in epochs]
    improved = [loss < min(losses[:i], default=np.inf) for i, loss in enumerate(losses)]
    assert [row[-1] == "*" for row in epochs] == improved
    best = max(i for i, row in enumerate(epochs) if row[-1] == "*")
    assert checkpoint.name.startswith(f"epoch={best}-")
    # Scenario rows and every metric only in the test table, printed once, naming the checkpoint.
    assert out.count("test metrics") == 1 and f"test metrics, {checkpoint.name}" in out
    table = out[out.index("test metrics"):]
    assert "click [home]" in table and "logloss" in table and "click [" not in out[:out.index("test metrics")]


def test_metrics_table_shows_per_scenario_rows_by_name_and_rows_without_content_apart(capsys):
    from fusionrec.training.callbacks import MetricsTable

    table = MetricsTable()
    trainer = SimpleNamespace(callback_metrics={"test/click/auc": 0.7, "test/click/auc/home": 0.75,
                                                "test/item_title/missing_rows": 31.0},
                              is_global_zero=True, ckpt_path=None)
    table.on_test_end(trainer, SimpleNamespace(model=SimpleNamespace(heads={"click": None})))
    printed = capsys.readouterr().out
    assert "click [home]" in printed and "0.7500" in printed
    assert "missing_rows" not in printed and "item_title 31" in printed.split("└")[-1]  # under the table


def test_the_epoch_line_marks_each_best_by_the_monitored_value_in_its_direction(capsys):
    from fusionrec.training.callbacks import MetricsTable

    heads = {"click": SimpleNamespace(primary_metric="auc"), "minutes": SimpleNamespace(primary_metric="rmse")}
    module = SimpleNamespace(model=SimpleNamespace(heads=heads))
    for monitor, mode, values, marked in (("val/loss", "min", [0.5, 0.4, 0.45, 0.3], [True, True, False, True]),
                                          ("val/click/auc", "max", [0.6, 0.7, 0.65, 0.7], [True, True, False, False])):
        callback = MetricsTable()
        checkpoint = SimpleNamespace(monitor=monitor, mode=mode, best_model_score=None)
        trainer = SimpleNamespace(checkpoint_callback=checkpoint, sanity_checking=False, is_global_zero=True,
                                  state=SimpleNamespace(fn="fit"))
        callback.on_train_start(trainer, module)
        for epoch, value in enumerate(values):
            trainer.current_epoch = epoch
            trainer.callback_metrics = {"val/loss": 1.0, "val/click/auc": 0.5, "val/minutes/rmse": 2.0, monitor: value}
            callback.on_validation_end(trainer, module)
        rows = capsys.readouterr().out.splitlines()[2:]
        assert [row.endswith("*") for row in rows] == marked, (monitor, rows)
        assert rows[0].split()[:2] == ["0", f"{values[0]:.4f}"] and "2.0000" in rows[0]


def test_every_built_in_head_names_one_of_its_metrics_as_primary():
    import inspect

    from fusionrec.plugins import get_registry

    labels = pd.Series([0, 1, 1, 0])
    for name, component in get_registry().components["heads"].items():
        head = component.factory
        options = {"parent": "click"} if "parent" in inspect.signature(head).parameters else {}
        built = head(8, head.fit_labels(labels, name, {}), **options)
        # "loss" (the task's validation loss) is the default for a head without metrics, such as retrieval's.
        assert head.primary_metric in built.metrics() or (head.primary_metric == "loss" and not built.metrics()), name


# Lightning notices this framework causes on purpose: frozen encoders kept out of training, the batch's own
# transfer to the device, and Lightning's own use of torch's deprecated LeafSpec.
EXPECTED_NOTICES = ("in eval mode at the start of training", "overridden `transfer_batch_to_device`", "LeafSpec")


def test_a_fit_with_frozen_media_encoders_raises_none_of_lightnings_expected_notices(tmp_path, monkeypatch):
    from lightning.pytorch.trainer.connectors import data_connector
    from lightning_utilities.core.rank_zero import WarningCache

    from fusionrec.data.synthetic_media import write_item_media

    # A fresh once-per-process cache: an earlier fit in this process would hide its notice.
    monkeypatch.setattr(data_connector, "warning_cache", WarningCache())
    rng = np.random.default_rng(0)
    items = write_item_media(rng.normal(0, 1, (30, 4)), tmp_path / "media", seed=0)
    log = pd.DataFrame({"user_id": rng.integers(0, 20, 300), "item_id": rng.integers(0, 30, 300),
                        "click": rng.integers(0, 2, 300)}).merge(items, on="item_id", how="left")
    log.to_parquet(tmp_path / "log.parquet")
    root = str(tmp_path / "media")
    config = {
        "trainer": {"max_epochs": 1, "logger": False, "enable_progress_bar": False, "enable_model_summary": False},
        "data": {"path": str(tmp_path / "log.parquet"), "split": {"method": "random"}, "batch_size": 64,
                 "features": {"user_id": {"type": "categorical"}, "item_image": {"type": "image", "root": root},
                              "item_audio": {"type": "audio", "root": root}}},
        "model": {"tasks": {"click": {"head": "binary"}}, "embedding_dim": 8,
                  "trunk": {"name": "shared_bottom", "hidden": [8]},
                  "encoders": {"item_image": {"backbone": "resnet18", "weights": None, "image_size": 32,
                                              "mode": "frozen"},
                               "item_audio": {"sample_rate": 8000, "duration": 1.0, "n_mels": 16, "channels": 8,
                                              "mode": "finetune", "finetune_top": 1}}},
    }
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["fit", "--config", str(write_config(tmp_path, config)),
                     "--trainer.default_root_dir", str(tmp_path / "runs")]) == 0
    assert [str(w.message) for w in caught if any(notice in str(w.message) for notice in EXPECTED_NOTICES)] == []


def test_a_checkpoint_naming_an_uninstalled_component_asks_for_its_distribution(trained, tmp_path):
    _, checkpoint, _ = trained
    state = torch.load(checkpoint, weights_only=True)
    # As if the model had been trained with a trunk from a plugin this environment lacks.
    state["fusionrec"]["components"]["trunk"] = {"name": "hstu", "plugin": "hstu_trunks.plugin",
                                                  "distribution": "fusionrec-hstu", "version": "0.3.1"}
    state["hyper_parameters"]["trunk"] = {"name": "hstu"}
    edited = tmp_path / "hstu.ckpt"
    torch.save(state, edited)
    from fusionrec.errors import ConfigError
    from fusionrec.training.module import MultiTaskModule
    with pytest.raises(ConfigError, match=r"trunk is the trunk 'hstu' from fusionrec-hstu 0\.3\.1.*install fusionrec-hstu"):
        MultiTaskModule.load_from_checkpoint(edited, map_location="cpu")
    # A part of a composite trunk (scenario_towers' base) is checked the same way.
    state = torch.load(checkpoint, weights_only=True)
    state["fusionrec"]["components"]["trunk_parts"] = {"base": {"name": "hstu", "plugin": "hstu_trunks.plugin",
                                                                "distribution": "fusionrec-hstu", "version": "0.3.1"}}
    torch.save(state, edited)
    with pytest.raises(ConfigError, match=r"trunk_parts\.base is the trunk 'hstu' from fusionrec-hstu 0\.3\.1"):
        MultiTaskModule.load_from_checkpoint(edited, map_location="cpu")
    # The untouched checkpoint still loads through the same check.
    assert MultiTaskModule.load_from_checkpoint(checkpoint, map_location="cpu").model is not None
