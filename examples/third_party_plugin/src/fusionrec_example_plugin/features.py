"""The ``weekday`` feature type: a time (seconds since 1970-01-01 UTC) -> the day of the week, as an id.

A scoring service imports this module by the ``implementation`` its bundle records, without torch,
pandas or pluggy: like every feature type, it needs numpy alone.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fusionrec.components import FeatureType, FieldInfo
from fusionrec.errors import ConfigError
from fusionrec.features import OUT_OF_VOCABULARY, RESERVED, FeatureValueError
from fusionrec.features.values import is_null, shown

DAY = 86_400
THURSDAY = 3  # 1970-01-01, with Monday as day 0


class Weekday(FeatureType):
    """``Int64[N]``: Monday is id 2 (the first id after the reserved ones), Sunday id 8; a null is the
    out-of-vocabulary id. ``utc_offset``: hours added to UTC before the day is taken (the users' zone)."""

    type_name = "weekday"
    options = {"utc_offset": 0}
    default_encoder = "categorical"  # an embedding per id, as for any id field
    null_means = "the out-of-vocabulary id"

    @classmethod
    def check_options(cls, options: Mapping[str, Any], key: str) -> dict[str, Any]:
        options = super().check_options(options, key)
        offset = options["utc_offset"]
        if isinstance(offset, bool) or not isinstance(offset, (int, float)) or not -12 <= offset <= 14:
            raise ConfigError(f"{key}.utc_offset: expected hours from -12 to 14, got {offset!r}")
        return options

    # Nothing to fit: the days of the week are known in advance.
    def fitted(self, partial: Any) -> dict[str, Any]:
        return {"type": self.type_name, "utc_offset": self.state["utc_offset"]}

    def field_info(self) -> FieldInfo:
        return FieldInfo(self.name, self.type_name, cardinality=7 + RESERVED)

    def transform(self, values: Sequence[Any] | np.ndarray) -> np.ndarray:
        if isinstance(values, np.ndarray) and values.dtype.kind in "iu":
            seconds = values.astype(np.float64)
        else:
            seconds = np.full(len(values), np.nan)
            for row, value in enumerate(values):
                if is_null(value):
                    continue
                if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isinf(value):
                    raise FeatureValueError(row, f"expected a time in seconds since 1970-01-01, got {shown(value)}")
                seconds[row] = value
        days = np.floor((seconds + self.state["utc_offset"] * 3600) / DAY)
        weekday = np.mod(days + THURSDAY, 7)
        return np.where(np.isnan(weekday), OUT_OF_VOCABULARY, weekday + RESERVED).astype(np.int64)

    def example_values(self, rng: np.random.Generator, count: int) -> list[Any]:
        return [int(second) for second in rng.integers(1_700_000_000, 1_700_000_000 + 14 * DAY, count - 1)] + [None]
