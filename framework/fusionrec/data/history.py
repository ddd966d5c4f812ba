"""Histories built from the log: each row's sequence of the same user's earlier events.

A ``sequence`` feature with a ``history`` option (docs/history.md) has no column of its own: row r's
value is the list of events e of the loaded log (every split but ``predict``) with
``user(e) == user(r)`` and ``time(e) < time(r)`` (strictly: an event at the same moment as r,
r's own included, is left out), and, with ``positive``, only the events whose label is positive;
oldest first, the most recent ``max_length`` kept. That is what a production system would know
when it scores r: the log's earlier events, whatever split they fell in.

Built without per-row Python: every row is sorted once by ``(user, time)`` (one stable argsort of a
combined ``user * T + time rank`` key), the events in that order form one array of element ids, and
each row keeps two numbers, where its user's events before its time end in that array and how many
of them it takes. A batch gathers ``Int64[B, L, P]`` from them (:class:`HistoryColumn`), the way a
media column gathers its items, so memory per row does not grow with ``max_length``:

    bytes per row = 4 (end) + 2 (count) + 4 * P * f

with ``P`` the parts of an element (1 + side fields) and ``f`` the share of rows that are events
(1 without ``positive``); the events' ids are int32 (int64 past 2**31 ids or events). Building
needs 60-85 bytes per row more while it runs (codes, keys and the sort, freed after): on a
10M-row log, 4.4 s and 594 MiB (``benchmarks/history_memory.py``, benchmarks/README.md).
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from fusionrec.data.preprocessing import column_values
from fusionrec.data.reading import require_columns
from fusionrec.errors import DataError, describe_value
from fusionrec.features.base import PADDING, FeatureType, FeatureValueError
from fusionrec.features.values import id_token


class HistoryColumn:
    """One split's built history. ``events``: ``[M + 1, P]`` element ids of the log's events sorted
    by (user, time), row 0 a padding element; ``ends``: ``[N]`` one past each row's last earlier
    event in ``events``; ``counts``: ``[N]`` how many events end there (at most ``max_length``)."""

    def __init__(self, events: Tensor, ends: Tensor, counts: Tensor, max_length: int):
        self.events, self.ends, self.counts, self.max_length = events, ends, counts, max_length
        self.steps = torch.arange(-max_length, 0)  # -L .. -1: the most recent event at the last position

    def __len__(self) -> int:
        return len(self.ends)

    def batch(self, index: Tensor) -> Tensor:
        """``[B]`` row numbers -> ``Int64[B, L, P]``, left-padded with 0, oldest event first."""
        ends = self.ends.index_select(0, index).long()[:, None]
        counts = self.counts.index_select(0, index).long()[:, None]
        # Absent positions read row 0 of ``events``, the padding element, instead of being masked after.
        positions = torch.where(self.steps >= -counts, ends + self.steps, 0)
        ids = self.events.index_select(0, positions.flatten())
        return ids.view(len(index), self.max_length, -1).long()

    def values(self) -> Tensor:
        """The whole split, ``Int64[N, L, P]`` (for tests and small splits)."""
        return self.batch(torch.arange(len(self)))


def build_histories(frames: Mapping[str, pd.DataFrame], kind: FeatureType, key: str,
                    queries: tuple[str, ...] = ("predict",)) -> dict[str, HistoryColumn]:
    """The history column of every frame in ``frames`` (splits, any order: time orders them), for
    the fitted ``sequence`` feature ``kind`` (its ``history`` and ``side`` state); ``key``: its config
    key, ``data.features.<name>``. The frames named in ``queries`` get histories but give no
    events (a predict file's rows are scored, not yet happened). The ``del``s keep the peak memory
    down: every array here is as long as the log."""
    spec = kind.state["history"]
    side = list(kind.state.get("side") or [])
    names = list(frames)
    for name in names:
        require_columns(frames[name], history_columns(kind, key, events=name not in queries))
    sizes = [len(frames[name]) for name in names]
    users = _user_codes([frames[name][spec["user"]] for name in names], f"{key}.history.user")
    times = _time_ranks([frames[name][spec["time"]] for name in names], f"{key}.history.time")
    span = int(times.max()) + 1 if len(times) else 1
    keys = users * span + times  # orders rows by (user, time); no overflow below ~3e9 users x 3e9 times
    del times
    is_event = np.concatenate([np.zeros(len(frames[name]), bool) if name in queries
                               else positive_rows(frames[name], spec.get("positive"), f"{key}.history.positive")
                               for name in names]) & (users >= 0)
    # Every row sorted once by (user, time), stably: events at one moment keep the log's order (the
    # order a brute-force reading gives). In that order, a row's earlier events are the events before
    # its run of equal keys, and its user's first event is the first event of its run of equal users.
    rows = np.argsort(keys, kind="stable")
    event_flags = is_event[rows]
    del is_event
    before = np.cumsum(event_flags) - event_flags  # events at sorted positions before each one
    order = rows[event_flags]  # the events by (user, time): where ``before`` counts into
    del event_flags
    sorted_keys = keys[rows]
    del keys
    ends = np.empty(len(rows), np.int64)
    ends[rows] = _at_run_start(before, sorted_keys)
    del sorted_keys
    sorted_users = users[rows]
    firsts = np.empty(len(rows), np.int64)
    firsts[rows] = _at_run_start(before, sorted_users)
    del sorted_users, before, rows
    counts = np.where(users >= 0, np.minimum(ends - firsts, kind.state["max_length"]), 0)
    del firsts, users
    offsets = np.cumsum([0, *sizes])
    event_frames = [(frames[name], start, stop) for name, start, stop in zip(names, offsets[:-1], offsets[1:])
                    if name not in queries]
    events = _event_ids(kind, event_frames, order, [spec["item"], *side])
    del order
    id_type = torch.int32 if max(len(events), int(events.max(initial=0)) + 1) < 2**31 else torch.int64
    events = torch.from_numpy(events).to(id_type)
    ends = torch.from_numpy(ends + 1).to(torch.int32 if len(events) < 2**31 else torch.int64)  # + 1: row 0 pads
    counts = torch.from_numpy(counts).to(torch.int16)  # max_length is at most MAX_PARTS, 1024
    return {name: HistoryColumn(events, ends[start:stop].clone(), counts[start:stop].clone(), kind.state["max_length"])
            for name, start, stop in zip(names, offsets[:-1], offsets[1:])}


def _at_run_start(values: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    """``values`` taken at the first position of each run of equal ``sorted_keys``, for every position."""
    starts = np.empty(len(sorted_keys), bool)
    starts[:1] = True
    np.not_equal(sorted_keys[1:], sorted_keys[:-1], out=starts[1:])
    return values[np.flatnonzero(starts)][np.cumsum(starts) - 1]


def history_columns(kind: FeatureType, key: str, events: bool = True) -> dict[str, str]:
    """The columns a built history reads, each with the config key that names it: user and time on
    every row; item, side fields and the positive label on the rows that are events (``events``)."""
    spec = kind.state["history"]
    needed = {spec["user"]: f"{key}.history.user", spec["time"]: f"{key}.history.time"}
    if events:
        needed[spec["item"]] = f"{key}.history.item"
        needed.update({column: f"{key}.side" for column in kind.state.get("side") or []})
        if spec.get("positive"):
            needed[spec["positive"]["column"]] = f"{key}.history.positive.column"
    return needed


def _event_ids(kind: FeatureType, event_frames: list[tuple[pd.DataFrame, int, int]], order: np.ndarray,
               columns: list[str]) -> np.ndarray:
    """``[M + 1, P]`` element ids of the events ``order`` (row numbers into the frames laid end to end;
    ``event_frames``: each frame with its first and last + 1 row there), a padding element first: the
    very ids ``kind.transform`` gives a list of these events."""
    parts = []
    for column in columns:
        arrays = [column_values(frame[column]) for frame, _, _ in event_frames]
        same = all(array.dtype == arrays[0].dtype for array in arrays)
        values = np.empty(len(order), arrays[0].dtype if arrays and same else object)
        for array, (_, start, stop) in zip(arrays, event_frames):
            inside = (order >= start) & (order < stop)
            values[inside] = array[order[inside] - start]
        parts.append(values)
    ids = kind.element_ids(parts)
    return np.concatenate([np.full((1, ids.shape[1]), PADDING, ids.dtype), ids])


def _user_codes(columns: list[pd.Series], key: str) -> np.ndarray:
    """One int64 code per user across the frames (-1: missing); 7, 7.0 and "7" are one user (the id
    rule, applied once per distinct value)."""
    values = pd.concat(columns, ignore_index=True) if len(columns) > 1 else columns[0].reset_index(drop=True)
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    if pd.api.types.is_numeric_dtype(values):
        return codes.astype(np.int64)
    try:
        tokens = [id_token(value, row) for row, value in enumerate(uniques)]
    except FeatureValueError as error:
        raise DataError(f"{key}: column '{columns[0].name}': {error.message}") from None
    merged = pd.factorize(pd.Series(tokens, dtype=object), use_na_sentinel=True)[0]
    return np.append(merged, -1).astype(np.int64)[codes]


def _time_ranks(columns: list[pd.Series], key: str) -> np.ndarray:
    """``[N]`` int64 ranks of the frames' times in one order (equal times, equal ranks); a missing
    time, a value that is neither a number nor an ISO 8601 date/time, or frames mixing numbers and
    dates are DataErrors naming the file and row."""
    kinds, values = [], []
    for column in columns:
        kind, numbers = _times(column, key)
        kinds.append(kind)
        values.append(numbers)
    if len(set(kinds)) > 1:
        first, other = kinds[0], next(k for k in kinds if k != kinds[0])
        raise DataError(f"{key}: column '{columns[0].name}' holds {first}s in {columns[0].attrs.get('source')} "
                        f"but {other}s in {columns[kinds.index(other)].attrs.get('source')}; give one kind of time")
    joined = np.concatenate(values) if len(values) > 1 else values[0]
    return np.unique(joined, return_inverse=True)[1].astype(np.int64).reshape(-1)


def _times(values: pd.Series, key: str) -> tuple[str, np.ndarray]:
    """``("number", [N] int64 or float64)`` or ``("date/time", [N] datetime64 in UTC)``: one orderable
    array of the column's times."""
    where = f"{key}: column '{values.name}' of {values.attrs.get('source') or 'the data'}"
    if isinstance(values.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(values):
        _no_missing(values, where)
        return "date/time", _utc(values)
    if pd.api.types.is_bool_dtype(values) or not (pd.api.types.is_numeric_dtype(values) or
                                                   pd.api.types.is_object_dtype(values) or
                                                   pd.api.types.is_string_dtype(values)):
        raise DataError(f"{where}: a {values.dtype} column is not a time; give numbers or ISO 8601 date/times")
    if pd.api.types.is_numeric_dtype(values):
        _no_missing(values, where)
        return "number", values.to_numpy()
    _no_missing(values, where)
    is_text = values.map(lambda value: isinstance(value, str)).to_numpy(bool)
    if not is_text.all():
        odd = int(np.flatnonzero(~is_text)[0]) if is_text.any() else None
        if odd is not None:
            raise DataError(f"{where}: mixes strings and numbers, {describe_value(values, odd)} among strings such "
                            f"as {describe_value(values, int(np.flatnonzero(is_text)[0]))}; times must be one kind")
        # Date or datetime objects: what a Parquet date32 column reads as.
        is_date = values.map(lambda value: isinstance(value, datetime.date)).to_numpy(bool)
        if is_date.all():
            return "date/time", _utc(pd.to_datetime(values, utc=True))
        if is_date.any():
            odd, date = int(np.flatnonzero(~is_date)[0]), int(np.flatnonzero(is_date)[0])
            raise DataError(f"{where}: mixes dates and numbers, {describe_value(values, odd)} among dates such as "
                            f"{describe_value(values, date)}; times must be one kind")
        numbers = pd.to_numeric(values, errors="coerce")
        if numbers.isna().any():
            position = int(np.flatnonzero(numbers.isna().to_numpy())[0])
            raise DataError(f"{where}: {describe_value(values, position)} is not a number or a date/time")
        return "number", numbers.to_numpy()
    numbers = pd.to_numeric(values, errors="coerce")
    if not numbers.isna().any():
        return "number", numbers.to_numpy()
    dates = pd.to_datetime(values, errors="coerce", utc=True, format="ISO8601")
    if dates.isna().any():
        # Point at a row of the kind the column mostly is not: the odd one out.
        failed = (dates.isna() if dates.isna().sum() <= numbers.isna().sum() else numbers.isna()).to_numpy()
        raise DataError(f"{where}: {describe_value(values, int(np.flatnonzero(failed)[0]))} is neither a number "
                        f"nor an ISO 8601 date/time ({int(failed.sum())} such row(s))")
    return "date/time", _utc(dates)


def _utc(dates: pd.Series) -> np.ndarray:
    """``[N]`` datetime64 in UTC, without a time zone. Not their int64 values: those count in the column's
    own unit (milliseconds from a Parquet file, microseconds from parsed strings), while numpy orders
    and joins datetime64 arrays of any units correctly."""
    if isinstance(dates.dtype, pd.DatetimeTZDtype):
        dates = dates.dt.tz_convert("UTC").dt.tz_localize(None)
    return dates.to_numpy()


def _no_missing(values: pd.Series, where: str) -> None:
    missing = values.isna().to_numpy()
    if missing.any():
        raise DataError(f"{where}: row {values.index[int(np.flatnonzero(missing)[0])]} has no time "
                        f"({int(missing.sum())} such row(s)); every row needs one to place it in the log")


def positive_rows(frame: pd.DataFrame, positive: Mapping | None, key: str) -> np.ndarray:
    """``Bool[N]``: the rows whose events count (all without ``positive``); a missing label is not positive."""
    if not positive:
        return np.ones(len(frame), bool)
    values = frame[positive["column"]]
    numbers = pd.to_numeric(values, errors="coerce")
    wrong = (numbers.isna() & values.notna()).to_numpy()
    if wrong.any():
        raise DataError(f"{key}.column: column '{positive['column']}' of {frame.attrs.get('source', 'the data')} "
                        f"holds a non-number, {describe_value(values, int(np.flatnonzero(wrong)[0]))}")
    numbers = numbers.to_numpy(dtype=np.float64, na_value=np.nan)
    with np.errstate(invalid="ignore"):
        return numbers >= positive["min"] if positive.get("min") is not None else numbers > 0
