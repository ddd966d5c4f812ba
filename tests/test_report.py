"""Run reports: fit writes training.png and calibration.png next to metrics.csv, `fusionrec report`
rebuilds them, and the numbers behind both plots are right."""

from __future__ import annotations

import io

import pandas as pd
import pytest
import torch
import yaml
from PIL import Image
from torchmetrics.classification import BinaryCalibrationError

from conftest import small_config, write_config
from fusionrec.cli import main, make_cli
from fusionrec.data.synthetic import generate_impressions
from fusionrec.reporting import write_report
from fusionrec.reporting.figures import CALIBRATION_PANEL, MAX_COLUMNS, TRAINING_PANEL, training_figure
from fusionrec.reporting.reliability import ReliabilityBins, bins_frame, reliability_curve
from fusionrec.reporting.training_log import read_metrics, training_log

DPI = 100  # figures.save_png


def expected_size(panels: int, panel: tuple[float, float] = TRAINING_PANEL) -> tuple[int, int]:
    """The PNG's pixels for ``panels`` panels of ``panel`` inches, in rows of MAX_COLUMNS."""
    columns = min(panels, MAX_COLUMNS)
    rows = -(-panels // columns)
    return round(panel[0] * columns * DPI), round((panel[1] * rows + 0.4) * DPI)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 2-epoch fit through the CLI with the default logger: (config path, run directory)."""
    root = tmp_path_factory.mktemp("report")
    config = small_config(trainer={"max_epochs": 2, "log_every_n_steps": 5, "enable_checkpointing": True})
    del config["trainer"]["logger"]  # fusionrec's default
    path = write_config(root, config)
    assert main(["fit", "--config", str(path), "--trainer.default_root_dir", str(root)]) == 0
    return path, root / "lightning_logs" / "version_0"


def assert_png(path, size):
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == size


def test_fit_writes_both_plots_next_to_metrics_csv(run):
    _, run_dir = run
    assert (run_dir / "metrics.csv").is_file()
    assert_png(run_dir / "training.png", expected_size(3 + 1))  # click, like, watch_time, the weights
    assert_png(run_dir / "calibration.png", expected_size(2, CALIBRATION_PANEL))  # the binary tasks only
    assert not list(run_dir.glob(".*.partial"))


def test_calibration_bins_count_the_test_split_of_each_probability_task(run):
    path, run_dir = run
    bins = pd.read_csv(run_dir / "calibration.csv")
    assert set(bins["task"]) == {"click", "like"} and set(bins["split"]) == {"test"}
    test_split = generate_impressions(**yaml.safe_load(path.read_text())["data"]["generate"]).iloc[-3000:]
    click = bins[bins["task"] == "click"]
    assert click["count"].sum() == len(test_split)
    assert click["label_sum"].sum() == pytest.approx(test_split["click"].sum())
    filled = click[click["count"] > 0]
    mean = filled["prediction_sum"] / filled["count"]
    assert ((mean >= filled["lower"]) & (mean <= filled["upper"])).all()
    assert len(filled) >= 3  # a trained model spreads its probabilities over several bins


def test_report_rebuilds_the_plots_from_the_logs(run, capsys):
    _, run_dir = run
    for name in ("training.png", "calibration.png"):
        (run_dir / name).unlink()
    assert main(["report", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert f"wrote {run_dir / 'training.png'}" in out and f"wrote {run_dir / 'calibration.png'}" in out
    assert_png(run_dir / "training.png", expected_size(4))
    assert_png(run_dir / "calibration.png", expected_size(2, CALIBRATION_PANEL))


def test_the_default_logger_is_csv_even_where_tensorboard_is_installed(tmp_path, monkeypatch):
    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.trainer.connectors.logger_connector import logger_connector

    monkeypatch.setattr(logger_connector, "_TENSORBOARD_AVAILABLE", True)
    config = small_config(trainer={"enable_checkpointing": True})
    del config["trainer"]["logger"]
    cli = make_cli(["--config", str(write_config(tmp_path, config)), "--trainer.default_root_dir", str(tmp_path)],
                   run=False)
    assert isinstance(cli.trainer.logger, CSVLogger)
    assert cli.trainer.log_dir == str(tmp_path / "lightning_logs" / "version_0")


@pytest.mark.parametrize("missing", ["run directory", "metrics.csv"])
def test_a_bad_run_directory_is_one_error_naming_the_path(tmp_path, capsys, missing):
    run_dir = tmp_path / "version_7"
    if missing == "metrics.csv":
        run_dir.mkdir()
    assert main(["report", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("fusionrec: error: ")
    assert str(run_dir / "metrics.csv" if missing == "metrics.csv" else run_dir) in err


def test_reliability_bins_by_hand():
    bins = ReliabilityBins(num_bins=4)
    # bins [0, .25) [.25, .5) [.5, .75) [.75, 1]; 1.0 belongs to the last one
    bins.update(torch.tensor([0.0, 0.1, 0.2, 0.6, 0.7, 1.0]), torch.tensor([0.0, 0.0, 1.0, 1.0, 0.0, 1.0]))
    curve = reliability_curve(bins_frame("test", "click", bins.compute()))
    assert curve.count.tolist() == [3, 2, 1]  # the empty bin is left out
    assert curve.lower.tolist() == [0.0, 0.5, 0.75]
    assert curve.mean_predicted == pytest.approx([0.1, 0.65, 1.0])
    assert curve.observed == pytest.approx([1 / 3, 0.5, 1.0])
    # sum_k n_k / n * |mean_predicted_k - observed_k|
    assert curve.expected_calibration_error == pytest.approx((3 * (1 / 3 - 0.1) + 2 * 0.15 + 0) / 6)
    assert curve.total == 6


def test_reliability_bins_match_torchmetrics_and_add_up_across_processes():
    generator = torch.Generator().manual_seed(0)
    probabilities = torch.rand(5000, generator=generator) * 0.999
    labels = (torch.rand(5000, generator=generator) < probabilities**2).float()  # overconfident
    whole, first, second = ReliabilityBins(), ReliabilityBins(), ReliabilityBins()
    whole.update(probabilities, labels)
    first.update(probabilities[:1234], labels[:1234])
    second.update(probabilities[1234:], labels[1234:])
    first.merge_state(second)  # what the DDP sum of the states gives
    for name, state in whole.compute().items():
        assert torch.allclose(first.compute()[name], state), name
    expected = BinaryCalibrationError(n_bins=15, norm="l1")(probabilities, labels.long()).item()
    assert expected > 0.05
    curve = reliability_curve(bins_frame("test", "click", whole.compute()))
    assert curve.expected_calibration_error == pytest.approx(expected, rel=1e-5)


METRICS_CSV = """epoch,step,train/loss,train/click/loss,train/click/weight,train/ctr/loss,train/ctr/weight,\
train/item_title/missing_rows,val/loss,val/click/loss,val/click/auc,val/ctr/loss,test/click/loss
0,4,1.5,0.70,1.0,0.80,0.5,,,,,,
0,9,1.4,0.65,0.9,0.75,0.6,3,,,,,
0,9,,,,,,,1.30,0.62,0.7,0.68,
1,14,1.2,0.60,0.8,0.70,0.7,,,,,,
1,19,,,,,,,1.35,0.64,0.71,0.71,
2,19,,,,,,,,,,,0.63
"""


def test_training_series_from_a_hand_written_log(tmp_path):
    (tmp_path / "metrics.csv").write_text(METRICS_CSV)
    log = training_log(read_metrics(tmp_path))
    assert list(log.losses) == ["click", "ctr"]  # not item_title: missing_rows is no loss
    assert log.losses["click"]["train"].steps.tolist() == [4, 9, 14]
    assert log.losses["click"]["train"].values.tolist() == [0.70, 0.65, 0.60]
    assert log.losses["ctr"]["val"].steps.tolist() == [9, 19]
    assert log.losses["ctr"]["val"].values.tolist() == [0.68, 0.71]
    assert log.weights["ctr"].values.tolist() == [0.5, 0.6, 0.7]
    assert log.weights["click"].steps.tolist() == [4, 9, 14]
    assert log.best == (9, 0)  # lowest val/loss
    figure = training_figure(log, "run")
    assert [panel.get_title() for panel in figure.axes if panel.get_visible()] == [
        "click: loss", "ctr: loss", "balancer weight per task"]
    # 5 panels on a 2 x 3 grid: the weights take the fifth place, the sixth stays empty.
    log.losses.update(cvr=log.losses["click"], share=log.losses["ctr"])
    panels = training_figure(log, "run").axes
    assert [panel.get_title() if panel.get_visible() else None for panel in panels] == [
        "click: loss", "ctr: loss", "cvr: loss", "share: loss", "balancer weight per task", None]
    assert [len(panel.get_lines()) for panel in panels[:5]] == [3, 3, 3, 3, 3]  # train, val, best; 2 weights, best


def test_no_weight_panel_without_weights_and_no_calibration_plot_without_probability_tasks(tmp_path):
    metrics = pd.read_csv(io.StringIO(METRICS_CSV))
    metrics.drop(columns=["train/click/weight", "train/ctr/weight"]).to_csv(tmp_path / "metrics.csv", index=False)
    (tmp_path / "calibration.csv").write_text("split,task,bin,lower,upper,count,prediction_sum,label_sum\n")
    lines = write_report(tmp_path)
    assert lines[0] == f"wrote {tmp_path / 'training.png'}"
    assert_png(tmp_path / "training.png", expected_size(2))  # click and ctr, no weight panel
    assert lines[1] == "no calibration plot: no task of this run scores a probability"
    assert not (tmp_path / "calibration.png").exists()
