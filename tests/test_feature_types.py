"""Feature types as components: partial fits merge into the one-chunk fit, training and serving encode
through the same transform, the registry checks what plugins register, and a bundle names each
field's type by an implementation a scoring service must be able to import."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pluggy
import pytest

from fusionrec import hookimpl, hookspecs
from fusionrec.data.preprocessing import IncrementalFit, Preprocessor
from fusionrec.data.schema import parse_features, parse_tasks
from fusionrec.errors import PluginError
from fusionrec.features import OUT_OF_VOCABULARY, FeatureType
from fusionrec.features.base import implementation
from fusionrec.features.values import Vocabulary, distinct
from fusionrec.plugins import ENTRY_POINT_GROUP, Registry, get_registry
from fusionrec.serving.bundle import FORMAT_VERSION, MANIFEST, Bundle, BundleError, write_checksums
from fusionrec.serving.features import FeatureEncoder, RequestError

FEATURES = {"user": {"type": "categorical", "min_count": 2}, "sku": {"type": "categorical", "hash_buckets": 97},
            "tags": {"type": "multi_categorical", "max_length": 3}, "price": {"type": "numeric", "na_values": ["?"]},
            "embedding": {"type": "vector"}}


def log(rows: int, seed: int = 0) -> pd.DataFrame:
    """Ids as files hold them (integers, a float column with gaps, strings), tags, numbers, vectors."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, 60, rows).astype(float)
    users[rng.random(rows) < 0.1] = np.nan
    prices = rng.normal(50.0, 20.0, rows).astype(object)
    prices[rng.random(rows) < 0.1] = "?"
    prices[rng.random(rows) < 0.1] = None
    tags = ["|".join(f"t{tag}" for tag in rng.integers(0, 12, rng.integers(0, 6))) for _ in range(rows)]
    tags[0] = None
    return pd.DataFrame({"user": users, "sku": [f"s{i}" for i in rng.integers(0, 500, rows)], "tags": tags,
                         "price": prices, "embedding": list(rng.normal(size=(rows, 4))), "y": rng.integers(0, 2, rows)})


def test_partial_fits_merge_into_the_one_chunk_fit():
    features, tasks = parse_features(FEATURES), parse_tasks({"y": {"head": "binary"}}, get_registry())
    frame = log(3000)
    whole = Preprocessor.fit(frame, features, tasks, get_registry()).state["features"]
    chunked = IncrementalFit(features, tasks, get_registry())
    for start, stop in [(0, 7), (7, 1000), (1000, 1001), (1001, 3000)]:
        chunked.update(frame.iloc[start:stop])
    merged = chunked.result().state["features"]
    for name in ("user", "sku", "tags", "embedding"):
        assert merged[name] == whole[name], name
    assert len(whole["user"]["vocabulary"]) > 10 and whole["sku"] == {"type": "categorical", "hash_buckets": 97}
    assert merged["price"]["mean"] == pytest.approx(whole["price"]["mean"], rel=1e-12)
    assert merged["price"]["std"] == pytest.approx(whole["price"]["std"], rel=1e-12)
    # A type's own merge, in any grouping of the partials.
    kind = features["tags"].feature_type("tags", features["tags"].options)
    parts = [kind.fit(frame["tags"].to_numpy()[i::3]) for i in range(3)]
    assert kind.merge([kind.merge(parts[:2]), parts[2]]) == kind.fit(frame["tags"].to_numpy())


def _request(values: pd.Series) -> list:
    """A column as a client sends it in JSON: null for a missing value, plain numbers and lists."""
    return [None if cell is None or (isinstance(cell, float) and np.isnan(cell))
            else cell.tolist() if isinstance(cell, np.ndarray) else cell for cell in values.tolist()]


def test_training_and_serving_encode_through_the_same_transform():
    features, tasks = parse_features(FEATURES), parse_tasks({"y": {"head": "binary"}}, get_registry())
    fitted = Preprocessor.fit(log(2000), features, tasks, get_registry())
    unseen = log(300, seed=1)  # other users (some never seen: OOV), skus hashed, tags cut at max_length
    unseen.loc[3, "user"] = 10_000.0
    trained = fitted.transform(unseen, get_registry(), with_labels=False).features
    encode = FeatureEncoder({name: {**entry, "implementation": implementation(type(fitted.types[name]))}
                             for name, entry in fitted.state["features"].items()})
    served = encode({name: _request(unseen[name]) for name in FEATURES})
    for name in FEATURES:
        np.testing.assert_array_equal(served[name], trained[name].numpy(), err_msg=name)
    users = trained["user"].numpy()
    assert users[3] == OUT_OF_VOCABULARY and (users[unseen["user"].isna().to_numpy()] == OUT_OF_VOCABULARY).all()
    assert (trained["tags"][0] == 0).all() and trained["price"][:, 1].sum() > 0  # null tags, missing prices
    # The id rule: 7, 7.0 and "7" are one id, each distinct value looked up once.
    vocabulary = Vocabulary(["7", "a"])
    assert vocabulary.ids([7, 7.0, "7", "a", None, float("nan"), "b"]).tolist() == [2, 2, 2, 3, 1, 1, 1]
    assert vocabulary.ids(np.array([7.0, np.nan, 8.5])).tolist() == [2, 1, 1]
    codes, tokens = distinct(np.array([3, 1, 3]))
    assert [tokens[code] for code in codes] == ["3", "1", "3"]
    with pytest.raises(RequestError, match=r"field 'user': row 1: expected one id \(a string or a number\)"):
        encode({**{name: _request(unseen[name][:2]) for name in FEATURES}, "user": [7, [7]]})


class Misnamed(FeatureType):
    type_name = "numeric"


def _registry(*plugins: object) -> Registry:
    plugin_manager = pluggy.PluginManager(ENTRY_POINT_GROUP)
    plugin_manager.add_hookspecs(hookspecs)
    for number, plugin in enumerate(plugins):
        plugin_manager.register(plugin, name=f"plugin{number}")
    return Registry(plugin_manager, {})


def test_the_registry_checks_registered_feature_types():
    class Mismatch:
        @hookimpl
        def fusionrec_register_feature_types(self):
            return {"price_bucket": Misnamed}

    with pytest.raises(PluginError, match="feature type 'price_bucket' of plugin 'plugin0'.*type_name is 'numeric'"):
        _registry(Mismatch())

    class Twice:
        @hookimpl
        def fusionrec_register_feature_types(self):
            return {"numeric": Misnamed}

    with pytest.raises(PluginError, match="feature type 'numeric' is registered by two plugins"):
        _registry(Twice(), Twice())
    assert _registry(Twice()).components["feature_types"]["numeric"].factory is Misnamed


@pytest.mark.parametrize("implementation, message", [
    ("no_such_module:Categorical", "cannot be imported"),
    ("fusionrec_features.tabular:Numeric", "is the 'numeric' feature type, not 'categorical'"),
    ("fusionrec.errors:ConfigError", "is not a FeatureType subclass"),
    ("Categorical", "is not 'module:QualName'"),
])
def test_a_bundle_whose_feature_implementation_cannot_be_used_is_refused(tmp_path, implementation, message):
    manifest = {"format": "fusionrec-bundle", "format_version": FORMAT_VERSION, "content": {"fields": {}},
                "preprocessing": {"user": {"type": "categorical", "vocabulary": ["a"],
                                           "implementation": implementation}}}
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    write_checksums(tmp_path)
    with pytest.raises(BundleError, match=f"{MANIFEST}: preprocessing: field 'user': implementation .*{message}"):
        Bundle(tmp_path)


def test_feature_type_modules_import_with_numpy_alone():
    script = """
import pkgutil, sys
for blocked in ("torch", "pandas", "pluggy"):
    sys.modules[blocked] = None  # importing any of them now fails
import importlib, fusionrec_features
names = [m.name for m in pkgutil.iter_modules(fusionrec_features.__path__) if m.name != "plugin"]
for name in names:
    importlib.import_module(f"fusionrec_features.{name}")
import fusionrec.features.values, fusionrec.serving.features
print(sorted(names))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert {"tabular", "content"} <= set(eval(result.stdout))


def test_fitted_state_from_before_the_id_rule_is_refused_only_where_it_would_be_misread():
    """Before id rule 2, a float id column with a non-whole value was read as "1.0" in training; now 1.0
    reads "1". Such a checkpoint is refused with one message; other old checkpoints load as they were."""
    from fusionrec.data.preprocessing import ID_RULE, Preprocessor
    from fusionrec.errors import ConfigError

    def state(vocabulary, **marker):
        return {"features": {"price_band": {"type": "categorical", "vocabulary": vocabulary}}, "tasks": {},
                "scenario": None, **marker}

    with pytest.raises(ConfigError, match=r"preprocessing\.features\.price_band: .*'1\.0'.*train the model again"):
        Preprocessor(state(["1.0", "1.5"]))
    old = Preprocessor(state(["1", "a"]))
    assert old.types["price_band"].transform(np.array([1.0, 7.0])).tolist() == [2, 1]
    assert Preprocessor(state(["1.0", "1.5"], id_rule=ID_RULE)).types["price_band"].transform(["1.0"]).tolist() == [2]
