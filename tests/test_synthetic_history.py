"""The quickstart generator's interest_drift: behaviour that only a user's history reveals."""

import numpy as np
import pandas as pd
import pytest

from fusionrec.data.synthetic import cache_path, generate_impressions, quickstart_log
from fusionrec.errors import ConfigError

LOG = {"rows": 40_000, "users": 500, "items": 400, "seed": 0}


def recency_gain(frame: pd.DataFrame) -> float:
    """How much more the category of the user's last click predicts a click than that of the user's
    first click: the difference of the click-rate gaps (same category - other) of the two. A user's
    lasting taste shows in both; an interest that drifts only in the last."""
    frame = frame.sort_values(["user_id", "timestamp"], kind="stable")
    clicked = frame["item_category"].where(frame["click"] == 1).groupby(frame["user_id"])
    last = clicked.transform(lambda categories: categories.shift().ffill())
    first = clicked.transform("first").where(last.notna())  # rows after the user's first click
    clicks = frame["click"].to_numpy()

    def gap(category: pd.Series) -> float:
        known = category.notna().to_numpy()
        same = (category == frame["item_category"]).to_numpy()
        return clicks[known & same].mean() - clicks[known & ~same].mean()

    return gap(last) - gap(first)


def test_the_category_clicked_last_predicts_the_next_click_only_with_drift():
    assert recency_gain(generate_impressions(**LOG, interest_drift=1.0)) > 0.12
    assert abs(recency_gain(generate_impressions(**LOG))) < 0.03


def test_drift_leaves_the_published_log_and_its_cache_name_alone(tmp_path):
    pd.testing.assert_frame_equal(generate_impressions(**LOG), generate_impressions(**LOG, interest_drift=0.0))
    drifting = generate_impressions(**LOG, interest_drift=0.5)
    assert 0.15 < (drifting["item_id"] != generate_impressions(**LOG)["item_id"]).mean() < 0.35
    # each row's item category follows its item, drifted or not
    items = drifting.groupby("item_id")["item_category"].nunique()
    assert (items == 1).all()
    assert quickstart_log(**LOG, directory=tmp_path) == cache_path("synthetic-impressions", {**LOG, "version": 2}, tmp_path)
    assert quickstart_log(**LOG, directory=tmp_path, interest_drift=1.0) != quickstart_log(**LOG, directory=tmp_path)
    with pytest.raises(ConfigError, match="data.generate.interest_drift"):
        generate_impressions(rows=10, users=5, items=5, interest_drift=-0.1)
