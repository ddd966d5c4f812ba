"""Bad input stops before training with one message naming the file, column or key."""

from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import write_config
from fusionrec.cli import main, make_cli
from fusionrec.components import Dropout, PositiveInt
from fusionrec.data.datamodule import MultiTaskDataModule
from fusionrec.data.preprocessing import IncrementalFit, Preprocessor
from fusionrec.data.schema import parse_features
from fusionrec.errors import ConfigError, DataError
from fusionrec.plugins import check_options, get_registry
from fusionrec_heads.metrics import DefinedBinaryAUROC


def rows(n: int = 200) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({"user": rng.integers(0, 20, n), "price": rng.random(n).round(3),
                         "click": rng.integers(0, 2, n), "minutes": rng.random(n) * 10})


def config(data_path: Path, **model) -> dict:
    return {
        "trainer": {"max_epochs": 1, "logger": False, "enable_progress_bar": False},
        "data": {"path": str(data_path), "split": {"method": "random", "ratios": [0.6, 0.2, 0.2]},
                 "features": {"user": {"type": "categorical"}, "price": {"type": "numeric"}}},
        "model": {"tasks": {"click": {"head": "binary"}, "minutes": {"head": "regression"}}, **model},
    }


def fit_error(tmp_path: Path, capsys, frame: pd.DataFrame | None, **change) -> str:
    """Run ``fusionrec fit`` on ``frame`` (written as CSV) with ``change`` applied to the config;
    returns the error message and checks nothing was written."""
    data = tmp_path / "log.csv"
    if frame is not None:
        frame.to_csv(data, index=False)
    cfg = config(data)
    for section, value in change.items():
        cfg[section] = value(cfg[section])
    path = write_config(tmp_path, cfg)
    code = main(["fit", "--config", str(path), "--trainer.default_root_dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    assert not list(tmp_path.rglob("*.ckpt"))
    return err


def test_a_missing_column_names_the_column_the_file_and_the_key(tmp_path, capsys):
    err = fit_error(tmp_path, capsys, rows(), data=lambda d: {**d, "features": {**d["features"],
                                                                               "age": {"type": "numeric"}}})
    assert "data.features.age" in err and "no column 'age'" in err and "log.csv" in err
    assert "columns: user, price, click, minutes" in err


def test_a_binary_label_outside_0_1(tmp_path, capsys):
    frame = rows()
    frame.loc[5, "click"] = 2
    err = fit_error(tmp_path, capsys, frame)
    assert "log.csv" in err and "column 'click'" in err and "must be 0 or 1, found 2" in err


def test_an_empty_file(tmp_path, capsys):
    (tmp_path / "log.csv").write_text("")
    err = fit_error(tmp_path, capsys, None)
    assert "data.path" in err and "log.csv is empty" in err


def test_a_header_only_file(tmp_path, capsys):
    (tmp_path / "log.csv").write_text("user,price,click,minutes\n")
    err = fit_error(tmp_path, capsys, None)
    assert "log.csv has no rows" in err


def test_a_nan_label(tmp_path, capsys):
    frame = rows()
    frame.loc[7, "minutes"] = np.nan
    err = fit_error(tmp_path, capsys, frame)
    assert "column 'minutes'" in err and "missing (NaN)" in err


def test_a_wrong_type_in_a_numeric_column(tmp_path, capsys):
    frame = rows().astype({"price": object})
    frame.loc[3, "price"] = "cheap"
    err = fit_error(tmp_path, capsys, frame)
    assert "column 'price': row 3: expected a number, got 'cheap'" in err


def test_an_unknown_plugin_name_lists_the_choices(tmp_path, capsys):
    err = fit_error(tmp_path, capsys, rows(), model=lambda m: {**m, "trunk": {"name": "mmeo"}})
    assert "model.trunk: unknown trunk 'mmeo'; available: mmoe, pepnet, ple, scenario_towers, shared_bottom, star" in err


def test_an_unknown_head_lists_the_choices(tmp_path, capsys):
    err = fit_error(tmp_path, capsys, rows(),
                    model=lambda m: {**m, "tasks": {"click": {"head": "binnary"}}})
    assert "model.tasks.click.head: unknown head 'binnary'" in err and "binary" in err


def test_an_unknown_feature_type(tmp_path, capsys):
    err = fit_error(tmp_path, capsys, rows(),
                    data=lambda d: {**d, "features": {"user": {"type": "categorial"}}})
    assert "data.features.user.type" in err and "categorical" in err


def test_a_missing_file(tmp_path, capsys):
    err = fit_error(tmp_path, capsys, None, data=lambda d: {**d, "path": str(tmp_path / "nope.parquet")})
    assert "data.path: file not found" in err and "nope.parquet" in err


def test_a_misspelled_head_option(tmp_path, capsys):
    err = fit_error(tmp_path, capsys, rows(),
                    model=lambda m: {**m, "tasks": {"click": {"head": "binary", "treshold": 1}}})
    assert "model.tasks.click" in err and "'treshold'" in err and "threshold" in err


def test_a_non_positive_batch_size(tmp_path, capsys):
    err = fit_error(tmp_path, capsys, rows(), data=lambda d: {**d, "batch_size": 0})
    assert err == "fusionrec: error: data.batch_size: expected an int >= 1, got 0\n"


# --- option types and ranges, from the signatures ------------------------------------------------------


def model_option(**options):
    return lambda model: {**model, **options}


def data_option(**options):
    return lambda data: {**data, **options}


@pytest.mark.parametrize("section, change, message", [
    ("model", model_option(trunk={"name": "mmoe", "num_experts": "three"}),
     "model.trunk.num_experts: expected an int >= 1, got 'three'"),
    ("model", model_option(trunk={"name": "mmoe", "num_experts": 2.5}),
     "model.trunk.num_experts: expected an int >= 1, got 2.5"),
    ("model", model_option(trunk={"name": "ple", "expert_hidden": [64, -8]}),
     "model.trunk.expert_hidden[1]: expected an int >= 1, got -8"),
    ("model", model_option(tasks={"click": {"head": "binary", "dropout": 1.5}}),
     "model.tasks.click.dropout: expected a number >= 0 and < 1, got 1.5"),
    ("model", model_option(tasks={"click": {"head": "binary", "tower": 64}}),
     "model.tasks.click.tower: expected a list of (an int >= 1), got 64"),
    ("model", model_option(fusion={"name": "attention", "dim": 8, "dropout": -0.1}),
     "model.fusion.dropout: expected a number >= 0 and < 1, got -0.1"),
    ("model", model_option(balancer={"name": "uncertainty", "learning_rate": "fast"}),
     "model.balancer.learning_rate: expected a finite number > 0 or null, got 'fast'"),
    ("model", model_option(encoders={"user": {"dim": 0}}), "model.encoders.user.dim: expected an int >= 1, got 0"),
    ("model", model_option(encoders={"user": {"name": "categorical", "dim": "wide"}}),
     "model.encoders.user.dim: expected an int >= 1, got 'wide'"),
    ("model", model_option(embedding_dim=0), "model.embedding_dim: expected an int >= 1, got 0"),
    ("model", model_option(learning_rate=-0.001), "model.learning_rate: expected a finite number > 0, got -0.001"),
    ("model", model_option(learning_rate=float("inf")), "model.learning_rate: expected a finite number > 0, got inf"),
    ("model", model_option(balancer={"name": "uncertainty", "learning_rate": float("inf")}),
     "model.balancer.learning_rate: expected a finite number > 0 or null, got inf"),
    ("model", model_option(weight_decay=-1), "model.weight_decay: expected a finite number >= 0, got -1"),
    ("model", model_option(embedding_budget_mib="lots"),
     "model.embedding_budget_mib: expected a finite number > 0 or null, got 'lots'"),
    ("data", data_option(num_workers=-1), "data.num_workers: expected an int >= 0, got -1"),
    ("data", data_option(split={"method": "random", "ratios": ["most", 0.1, 0.1]}),
     "data.split.ratios[0]: expected a finite number >= 0, got 'most'"),
    ("data", data_option(split={"method": "shuffled"}),
     "data.split.method: expected one of 'random', 'time', got 'shuffled'"),
])
def test_a_bad_option_value_is_one_line_naming_its_key_before_the_data_is_read(tmp_path, capsys, section, change,
                                                                               message):
    # No data file: an option checked only once the data is read would fail on the file instead.
    err = fit_error(tmp_path, capsys, None, **{section: change})
    assert err == f"fusionrec: error: {message}\n"


def test_a_bad_value_on_the_command_line_is_one_line(tmp_path, capsys):
    path = write_config(tmp_path, config(tmp_path / "log.csv"))
    assert main(["fit", "--config", str(path), "--model.embedding_dim", "three"]) == 2
    assert capsys.readouterr().err == "fusionrec: error: model.embedding_dim: expected an int >= 1, got 'three'\n"


class Tower:
    """A third-party component: its annotations are its options' contract (strings here, under
    ``from __future__ import annotations``)."""

    def __init__(self, input_dim: int, width: PositiveInt = 4, rate: Dropout = 0.0, mode: Literal["a", "b"] = "a",
                 scale: float | None = None, widths: list[PositiveInt] | None = None):
        pass


@pytest.mark.parametrize("options, message", [
    ({"width": 0}, "model.tower.width: expected an int >= 1, got 0"),
    ({"width": True}, "model.tower.width: expected an int >= 1, got True"),
    ({"width": "4"}, "model.tower.width: expected an int >= 1, got '4'"),
    ({"rate": 1.0}, "model.tower.rate: expected a number >= 0 and < 1, got 1.0"),
    ({"mode": "c"}, "model.tower.mode: expected one of 'a', 'b', got 'c'"),
    ({"scale": "null"}, "model.tower.scale: expected a number or null, got 'null'"),
])
def test_a_components_signature_types_its_options(options, message):
    with pytest.raises(ConfigError) as error:
        check_options(Tower, options, "model.tower", skip=1)
    assert str(error.value) == message
    check_options(Tower, {"width": 2, "rate": 0.5, "mode": "b", "scale": 3}, "model.tower", skip=1)  # 3: a number


def test_checked_options_stay_plain_data_for_checkpoints(tmp_path):
    """jsonargparse reads PositiveInt values as its own int subclass, which a checkpoint loaded with
    weights_only=True refuses: the saved hyperparameters must stay plain ints and floats."""
    cfg = config(tmp_path / "log.csv", trunk={"name": "mmoe", "num_experts": 2, "expert_hidden": [16, 8]})
    cli = make_cli(["--config", str(write_config(tmp_path, cfg))], run=False)
    for hparams in (cli.model.hparams, cli.datamodule.hparams):
        buffer = io.BytesIO()
        torch.save(dict(hparams), buffer)
        buffer.seek(0)
        assert torch.load(buffer, weights_only=True) == dict(hparams)
    # Checked once when the model is configured and again when it is built: the check reads the values
    # without converting them in place.
    options = {"widths": [16, 8]}
    for _ in range(2):
        check_options(Tower, options, "model.tower", skip=1)
    assert type(options["widths"][0]) is int


# --- numeric statistics ----------------------------------------------------------------------------------


def fit_numeric(*chunks: list[float]) -> dict:
    fit = IncrementalFit(parse_features({"price": {"type": "numeric"}}), {}, get_registry())
    for values in chunks:
        fit.update(pd.DataFrame({"price": values}))
    return fit.result().state["features"]["price"]


def test_a_value_beyond_float64_names_its_row(tmp_path, capsys):
    frame = rows().astype({"price": object})
    frame.loc[9, "price"] = "1e400"
    err = fit_error(tmp_path, capsys, frame)
    assert "log.csv" in err and "column 'price': row 9: inf is not a finite number" in err


def test_extreme_values_give_finite_statistics_that_standardise_them():
    values = [1e308, -1.5e308, 3.0, 1.7e308, -2.0]
    entry = fit_numeric(values)
    json.dumps(entry, allow_nan=False)  # the manifest must stay valid JSON
    assert entry["mean"] == pytest.approx(np.mean(np.array(values) / 1e300) * 1e300, rel=1e-12)
    assert entry["std"] == pytest.approx(np.std(np.array(values) / 1e300) * 1e300, rel=1e-12)
    # Merged from chunks of very different magnitudes, the same statistics.
    merged = fit_numeric(values[2:], values[:2])
    assert merged["mean"] == pytest.approx(entry["mean"], rel=1e-12)
    assert merged["std"] == pytest.approx(entry["std"], rel=1e-12)
    standardised = Preprocessor({"features": {"price": entry}, "tasks": {}}).transform(
        pd.DataFrame({"price": values}), get_registry(), with_labels=False).features["price"]
    assert torch.isfinite(standardised).all()


def test_ordinary_values_get_numpys_statistics_exactly():
    values = np.random.default_rng(3).normal(40.0, 7.0, 1000)
    entry = fit_numeric(values)
    assert entry["mean"] == values.mean() and entry["std"] == values.std()


def test_a_value_too_far_from_the_training_mean_for_float32_names_its_row():
    entry = fit_numeric([1.0, 1.0 + 1e-6])
    with pytest.raises(DataError, match=r"column 'price': row 1: 1e\+300 is not a finite float32 number once "
                                        r"standardised"):
        Preprocessor({"features": {"price": entry}, "tasks": {}}).transform(
            pd.DataFrame({"price": [1.0, 1e300]}), get_registry(), with_labels=False)


# --- splits with no rows or one class ----------------------------------------------------------------------


def test_a_split_that_rounds_to_no_rows_names_the_split_and_the_file(tmp_path, capsys):
    err = fit_error(tmp_path, capsys, rows(12),
                    data=data_option(split={"method": "random", "ratios": [0.9, 0.05, 0.05]}))
    assert "data.split: the val split of" in err and "log.csv has no rows (0.05 of 12 rows)" in err


def test_a_split_left_out_on_purpose_is_not_an_error(tmp_path):
    data = tmp_path / "log.csv"
    rows(50).to_csv(data, index=False)
    cfg = config(data)
    module = MultiTaskDataModule(**{**cfg["data"], "split": {"method": "random", "ratios": [0.8, 0.2, 0.0]}},
                                 tasks=cfg["model"]["tasks"])
    module.setup("fit")
    assert set(module.tables) == {"train", "val"}


def test_an_auc_over_one_class_is_not_defined():
    auc = DefinedBinaryAUROC()
    auc.update(torch.tensor([0.2, 0.9, 0.4]), torch.tensor([0, 0, 0]))
    assert math.isnan(auc.compute())
    auc.update(torch.tensor([0.8]), torch.tensor([1]))
    assert auc.compute() == pytest.approx(2 / 3)  # 0.8 outranks two of the three negatives


def one_class_config(tmp_path: Path, val_has_one_class: bool) -> Path:
    """A config training on mixed rows and testing on rows whose click is always 0 (validating on them too,
    with ``val_has_one_class``)."""
    train, one_class = tmp_path / "train.csv", tmp_path / "one_class.csv"
    rows(200).to_csv(train, index=False)
    rows(40).assign(click=0).to_csv(one_class, index=False)
    cfg = config(train)
    cfg["data"] = {**cfg["data"], "train": str(train), "val": str(one_class if val_has_one_class else train),
                   "test": str(one_class)}
    del cfg["data"]["path"], cfg["data"]["split"]
    cfg["trainer"].update(logger=True, num_sanity_val_steps=0)
    return write_config(tmp_path, cfg)


def test_a_one_class_split_prints_n_a_and_logs_no_zero(tmp_path, capsys):
    code = main(["fit", "--config", str(one_class_config(tmp_path, True)), "--trainer.default_root_dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    # The per-epoch line: each task's main metric, the click AUC not defined.
    header = next(line for line in lines if line.split()[:1] == ["epoch"])
    names = [name.strip() for name in re.split(r"\s{2,}", header.strip())]
    epoch = next(line for line in lines if line.split()[:1] == ["0"]).split()
    assert names[:2] == ["epoch", "val/loss"] and epoch[names.index("click auc")] == "n/a"
    assert epoch[names.index("minutes rmse")] != "n/a"
    # The tested checkpoint's full table: every metric, n/a where not defined.
    header = [cell.strip() for cell in next(line for line in lines if "┃ task" in line).split("┃")]
    click = [cell.strip() for cell in next(line for line in lines if "│ click" in line).split("│")]
    assert click[header.index("auc")] == "n/a" and click[header.index("logloss")] != "n/a"
    assert out.count("n/a: not defined on these rows") == 2  # under the epoch lines and under the table
    logged = pd.read_csv(tmp_path / "lightning_logs" / "version_0" / "metrics.csv")
    assert logged["val/click/auc"].isna().all() and logged["val/click/logloss"].notna().any()


def test_a_metric_not_defined_on_the_test_split_is_null_in_the_bundle(tmp_path):
    assert main(["fit", "--config", str(one_class_config(tmp_path, False)), "--trainer.default_root_dir",
                 str(tmp_path), "--test_after_fit", "false"]) == 0
    (checkpoint,) = tmp_path.glob("**/last.ckpt")
    assert main(["export", "--ckpt", str(checkpoint), "--out", str(tmp_path / "bundle"), "--no-onnx"]) == 0
    # Strict JSON (no NaN token), with null where the metric is not defined.
    metrics = json.loads((tmp_path / "bundle" / "manifest.json").read_text(),
                         parse_constant=lambda token: pytest.fail(f"manifest.json holds {token}"))["test_metrics"]
    assert metrics["test/click/auc"] is None and metrics["test/click/logloss"] > 0
