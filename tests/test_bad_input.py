"""Bad input stops before training with one message naming the file, column or key."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from conftest import write_config
from fusionrec.cli import main


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
    assert "column 'price'" in err and "'cheap'" in err and "non-number" in err


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
    assert "data.batch_size: expected a positive number of rows, got 0" in err
