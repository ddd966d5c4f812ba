"""The example third-party plugin (examples/third_party_plugin): unit tests of its components, then
the package pip-installed into this environment and used through the CLI like any user would.

The end-to-end tests run the CLI in fresh subprocesses, so entry points are discovered anew after
the install; the package is uninstalled again when the module's tests are done.
"""

from __future__ import annotations

import csv
import importlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pandas as pd
import pluggy
import pytest
import torch
import yaml

from fusionrec import hookspecs
from fusionrec.components import FieldInfo
from fusionrec.data.preprocessing import Preprocessor
from fusionrec.data.schema import parse_features, parse_tasks
from fusionrec.errors import ConfigError, DataError
from fusionrec.plugins import ENTRY_POINT_GROUP, Registry

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "third_party_plugin"
DISTRIBUTION = "fusionrec-example-plugin"
PLUGIN_COMPONENTS = {("feature_types", "weekday"), ("encoders", "bucketized_numeric"), ("heads", "poisson")}
TUESDAY = 1_700_000_000  # 2023-11-14 22:13:20 UTC


# --------------------------------------------------------------------------------------------
# Unit tests, on the example's source tree (no install needed)
# --------------------------------------------------------------------------------------------


@pytest.fixture
def example(monkeypatch):
    """The ``fusionrec_example_plugin`` package imported from the example's source tree."""
    monkeypatch.syspath_prepend(str(EXAMPLE / "src"))
    return importlib.import_module("fusionrec_example_plugin.plugin")


@pytest.fixture
def registry(example) -> Registry:
    """A registry holding only the example plugin, registered in code."""
    plugin_manager = pluggy.PluginManager(ENTRY_POINT_GROUP)
    plugin_manager.add_hookspecs(hookspecs)
    plugin_manager.register(example, name="example")
    return Registry(plugin_manager, {})


def test_weekday_feature_type_encodes_days_the_same_in_training_and_serving(example, registry):
    from fusionrec_example_plugin import Weekday

    from fusionrec.features import FeatureValueError
    from fusionrec.serving.features import FeatureEncoder, RequestError

    features = parse_features({"timestamp": {"type": "weekday", "utc_offset": 2}}, registry=registry)
    times = [TUESDAY, TUESDAY - 86_400, None, TUESDAY + 5 * 86_400]
    frame = pd.DataFrame({"timestamp": times, "y": [0, 1, 0, 1]})
    fitted = Preprocessor.fit(frame, features, {}, registry)
    assert fitted.state["features"]["timestamp"] == {"type": "weekday", "utc_offset": 2}
    assert fitted.field_infos()["timestamp"].cardinality == 9
    # 22:13 UTC is the next day at UTC+2: Wednesday, Tuesday, missing (id 1), Monday (id 2).
    ids = fitted.transform(frame, registry, with_labels=False).features["timestamp"].tolist()
    assert ids == [4, 3, 1, 2]
    serving = FeatureEncoder({"timestamp": {**fitted.state["features"]["timestamp"],
                                            "implementation": "fusionrec_example_plugin.features:Weekday"}})
    assert serving({"timestamp": times})["timestamp"].tolist() == ids
    with pytest.raises(RequestError, match="field 'timestamp': row 1: expected a time in seconds"):
        serving({"timestamp": [TUESDAY, "tuesday"]})
    with pytest.raises(FeatureValueError):
        Weekday("timestamp", {"utc_offset": 0}).transform([float("inf")])
    with pytest.raises(ConfigError, match=r"data\.features\.timestamp\.utc_offset: expected hours"):
        parse_features({"timestamp": {"type": "weekday", "utc_offset": 30}}, registry=registry)


def test_bucketized_encoder_maps_values_to_buckets(example):
    from fusionrec_example_plugin import BucketizedNumericEncoder

    encoder = BucketizedNumericEncoder(FieldInfo("hour", "numeric", width=2), 4, num_buckets=8, range=[-2.0, 2.0])
    # (standardised value, missing flag): below the range, inside it, above it, and missing.
    values = torch.tensor([[-5.0, 0.0], [-1.9, 0.0], [0.1, 0.0], [1.9, 0.0], [5.0, 0.0], [0.3, 1.0]])
    encoded = encoder(values)
    assert encoder.output_dim == 4
    assert encoded.shape == (6, 4)
    assert encoder.bucket_ids(values).tolist() == [0, 0, 4, 7, 7, 8]
    torch.testing.assert_close(encoded[5], encoder.embedding.weight[8])  # the missing embedding
    encoded.sum().backward()
    assert encoder.embedding.weight.grad.abs().sum() > 0


def test_bucketized_encoder_options_are_checked(registry):
    field = FieldInfo("hour", "numeric", width=2)
    built = registry.build("encoders", "bucketized_numeric", "model.encoders.hour", field, 8, num_buckets=3)
    assert built(torch.zeros(2, 2)).shape == (2, 8)
    with pytest.raises(ConfigError, match=r"model\.encoders\.hour: unknown option\(s\) 'buckets'"):
        registry.build("encoders", "bucketized_numeric", "model.encoders.hour", field, 8, buckets=3)
    with pytest.raises(ConfigError, match=r"model\.encoders\.hour\.num_buckets"):
        registry.build("encoders", "bucketized_numeric", "model.encoders.hour", field, 8, num_buckets=0)
    with pytest.raises(ConfigError, match=r"model\.encoders\.hour\.range"):
        registry.build("encoders", "bucketized_numeric", "model.encoders.hour", field, 8, range=[1.0, 1.0])


def test_poisson_head_rejects_negative_label_naming_the_column(registry):
    frame = pd.DataFrame({"hour": [1.0, 5.0, 9.0, 13.0], "visits": [0, 2, -1, 3]})
    frame.attrs["source"] = "train.parquet"
    features = parse_features({"hour": {"type": "numeric"}})
    tasks = parse_tasks({"visits": {"head": "poisson"}}, registry)
    with pytest.raises(DataError, match=r"train\.parquet, column 'visits'.*non-negative.*-1 at row 2"):
        Preprocessor.fit(frame, features, tasks, registry)

    head = registry.get("heads", "poisson", "model.tasks.visits.head").factory
    where = "val.parquet, column 'visits' (task 'visits')"
    with pytest.raises(DataError, match=re.escape(where) + r".*-1 at row 8"):  # the row as the file numbers it
        head.encode_labels(pd.Series([1, -1], index=[7, 8]), {"mean": 1.0}, where)
    with pytest.raises(DataError, match=re.escape(where) + r".*row 1.*missing"):
        head.encode_labels(pd.Series([1.0, None]), {"mean": 1.0}, where)
    labels = head.encode_labels(pd.Series([0, 3, 1.5]), {"mean": 1.0}, where)
    assert labels.dtype == torch.float32 and labels.tolist() == [0.0, 3.0, 1.5]


def test_poisson_head_output_loss_and_metrics(example):
    from fusionrec_example_plugin import PoissonHead

    head = PoissonHead(8, PoissonHead.fit_labels(pd.Series([1, 2, 3]), "data, column 'n'", {}), tower=[16])
    torch.nn.init.zeros_(head.output.weight)
    h = torch.randn(5, 8)
    log_rate = head(h)
    assert log_rate.shape == (5,)
    torch.testing.assert_close(head.predict(log_rate), torch.full((5,), 2.0))  # starts at the mean count
    target = torch.tensor([0.0, 1.0, 2.0, 4.0, 0.0])
    torch.testing.assert_close(head.loss(log_rate, target),
                               torch.nn.functional.poisson_nll_loss(log_rate, target, log_input=True))

    metrics = torch.nn.ModuleDict(head.metrics())
    assert set(metrics) == {"mae", "deviance"}
    head.update_metrics(metrics, torch.log(torch.tensor([1.0, 2.0])), torch.tensor([1.0, 2.0]))
    assert metrics["deviance"].compute().item() == pytest.approx(0.0, abs=1e-6)  # a perfect prediction


# --------------------------------------------------------------------------------------------
# End to end: pip install, `fusionrec plugins`, `fusionrec fit`, `fusionrec test`
# --------------------------------------------------------------------------------------------


def _release(distribution: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in re.findall(r"\d+", version(distribution))[:2])
    except PackageNotFoundError:
        return ()


def _build_flags() -> list[str]:
    """Build with this environment's setuptools when it can build wheels (>= 70.1, or >= 61 with
    ``wheel``), which needs no network; otherwise let pip fetch a recent one into an isolated build."""
    setuptools = _release("setuptools")
    if setuptools >= (70, 1) or (setuptools >= (61,) and _release("wheel")):
        return ["--no-build-isolation"]
    return []


def _run(command: list[str], env: dict[str, str] | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    assert result.returncode == 0, (f"{' '.join(command)} exited with {result.returncode}\n"
                                    f"--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}")
    return result


def _pip(*args: str) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-m", "pip", "--no-input", *args])


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory):
    """The example package pip-installed (from a copy, so the build leaves nothing in the repo)."""
    source = tmp_path_factory.mktemp("plugin") / "third_party_plugin"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    _pip("install", "--no-deps", *_build_flags(), str(source))
    try:
        yield
    finally:
        _pip("uninstall", "--yes", DISTRIBUTION)


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory) -> dict[str, str]:
    env = {**os.environ, "FUSIONREC_STRICT_PLUGINS": "1",
           "FUSIONREC_CACHE_DIR": str(tmp_path_factory.mktemp("cache")),
           "COLUMNS": "200"}  # rich would otherwise cut the plugins table to 80 columns
    env.pop("FUSIONREC_DISABLE_PLUGIN_AUTOLOAD", None)  # it would hide every third-party plugin
    return env


def _fusionrec(*args: str) -> list[str]:
    script = Path(sys.executable).with_name("fusionrec")
    return [str(script), *args] if script.exists() else [sys.executable, "-m", "fusionrec.cli", *args]


def _metrics(log_dir: Path) -> dict[str, float]:
    """The last logged value of every column of a CSVLogger's metrics.csv."""
    with open(log_dir / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {key: float(row[key]) for row in rows for key in row if row[key] not in ("", None)}


def test_plugins_command_lists_the_example_components(installed_plugin, cli_env):
    output = _run(_fusionrec("plugins"), cli_env).stdout
    rows = {}
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.split("│")[1:-1]]
        if len(cells) == 5:
            rows[cells[0], cells[1]] = cells[2:]
    for slot, name in PLUGIN_COMPONENTS:
        assert (slot, name) in rows, f"{slot} '{name}' missing from `fusionrec plugins`:\n{output}"
        plugin, distribution, release = rows[slot, name]
        assert (plugin, distribution, release) == ("example", DISTRIBUTION, "0.1.0")
    assert rows["heads", "binary"][1] == "fusionrec"  # the built-ins are still there


def test_fit_and_test_with_the_example_components(installed_plugin, cli_env, tmp_path):
    def config(save_dir: Path) -> dict:
        return {
            "seed_everything": 0,
            "trainer": {"max_epochs": 1, "enable_progress_bar": False, "enable_model_summary": False,
                        "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                                   "init_args": {"save_dir": str(save_dir)}}},
            "data": {
                "generate": {"rows": 20000, "users": 500, "items": 300, "seed": 0},
                "split": {"method": "time", "ratios": [0.8, 0.1, 0.1], "time_column": "timestamp"},
                "features": {"user_id": {"type": "categorical"}, "item_id": {"type": "categorical"},
                             "user_age": {"type": "numeric"}, "hour": {"type": "numeric"},
                             "timestamp": {"type": "weekday"}},  # the plugin's own feature type
                "batch_size": 512,
            },
            "model": {
                "embedding_dim": 8,
                # user_age has missing values, so its missing-value embedding is exercised too.
                "encoders": {"hour": {"name": "bucketized_numeric", "num_buckets": 8, "range": [-2.0, 2.0]},
                             "user_age": {"name": "bucketized_numeric"}},
                "trunk": {"name": "shared_bottom", "hidden": [32]},
                # Clicks per impression as a Poisson count (0 or 1 here), beside a built-in head.
                "tasks": {"clicks": {"head": "poisson", "label": "click", "tower": [16]},
                          "like": {"head": "binary"}},
                "learning_rate": 0.003,
            },
        }

    fit_root, test_root = tmp_path / "fit", tmp_path / "test"
    fit_config = tmp_path / "fit.yaml"
    fit_config.write_text(yaml.safe_dump(config(fit_root), sort_keys=False))
    _run(_fusionrec("fit", "--config", str(fit_config), "--trainer.default_root_dir", str(fit_root)), cli_env)

    fit_log = fit_root / "lightning_logs" / "version_0"
    validation = _metrics(fit_log)
    assert {"val/clicks/deviance", "val/clicks/mae", "val/clicks/loss", "val/like/auc"} <= set(validation)
    (checkpoint,) = (fit_log / "checkpoints").glob("epoch=*.ckpt")
    components = torch.load(checkpoint, map_location="cpu", weights_only=True)["fusionrec"]["components"]
    assert components["heads"]["clicks"] == {"name": "poisson", "plugin": "example",
                                             "distribution": DISTRIBUTION, "version": "0.1.0"}
    assert components["encoders"]["hour"]["name"] == "bucketized_numeric"
    assert components["encoders"]["hour"]["distribution"] == DISTRIBUTION

    test_config = tmp_path / "test.yaml"
    test_config.write_text(yaml.safe_dump(config(test_root), sort_keys=False))
    _run(_fusionrec("test", "--config", str(test_config), "--trainer.default_root_dir", str(test_root),
                    "--ckpt_path", str(checkpoint)), cli_env)
    test = _metrics(test_root / "lightning_logs" / "version_0")
    assert {"test/clicks/deviance", "test/clicks/mae", "test/like/auc"} <= set(test)
    assert math.isfinite(test["test/clicks/deviance"]) and test["test/clicks/deviance"] >= 0
    assert 0 <= test["test/clicks/mae"] <= 1  # predicted rates vs 0/1 labels

    # Exported and served: both runtimes import the weekday type by the implementation the manifest names.
    bundle = tmp_path / "bundle"
    _run(_fusionrec("export", "--ckpt", str(checkpoint), "--out", str(bundle)), cli_env)
    script = f"""
import json
from fusionrec.serving import load, load_onnx
for loader in (load, load_onnx):
    served = loader({str(bundle)!r})
    served.check()
    rows = json.load(open({str(bundle / "golden.json")!r}))["inputs"]
    print(json.dumps({{"implementation": served.manifest["preprocessing"]["timestamp"]["implementation"],
                       "days": served.encode(rows)["timestamp"].tolist(),
                       "clicks": served.score(rows)["clicks"].tolist()}}))
"""
    lines = _run([sys.executable, "-c", script], cli_env).stdout.strip().splitlines()[-2:]
    golden_times = json.loads((bundle / "golden.json").read_text())["inputs"]["timestamp"]
    for line in lines:
        served = json.loads(line)
        assert served["implementation"] == "fusionrec_example_plugin.features:Weekday"
        assert served["days"][-1] == 1 and golden_times[-1] is None  # a missing time
        assert all(2 <= day <= 8 for day in served["days"][:-1])
        assert all(math.isfinite(rate) and rate > 0 for rate in served["clicks"])
