"""Reading tables (Parquet, CSV/TSV, RecBole atomic files), joining side tables, splitting."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from fusionrec.errors import ConfigError, DataError

ATOMIC_SUFFIXES = {".inter", ".item", ".user"}


def read_table(path: str | Path, key: str) -> pd.DataFrame:
    """One table; ``key`` is the config key that named the file, for messages."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{key}: file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix in {".parquet", ".pq"}:
            frame = pd.read_parquet(path)
        elif suffix in {".csv", ".tsv", ".txt"}:
            frame = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
        elif suffix in ATOMIC_SUFFIXES:
            # RecBole atomic file: tab-separated, header "name:type"; ids stay strings.
            frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, na_values=[""])
            frame.columns = [column.split(":", 1)[0] for column in frame.columns]
        else:
            raise DataError(f"{key}: {path}: unknown file type '{suffix}'; use .parquet, .csv, .tsv or a "
                            f"RecBole atomic file ({', '.join(sorted(ATOMIC_SUFFIXES))})")
    except pd.errors.EmptyDataError:
        raise DataError(f"{key}: {path} is empty") from None
    except (OSError, ValueError) as error:
        raise DataError(f"{key}: cannot read {path}: {error}") from None
    if frame.empty:
        raise DataError(f"{key}: {path} has no rows")
    frame.attrs["source"] = str(path)
    return frame


def require_columns(frame: pd.DataFrame, needed: dict[str, str]) -> None:
    """``needed`` maps column -> the config key that asks for it."""
    for column, key in needed.items():
        if column not in frame.columns:
            raise DataError(
                f"{key}: no column '{column}' in {frame.attrs.get('source', 'the data')}; "
                f"columns: {', '.join(map(str, frame.columns))}"
            )


def join_side_tables(frame: pd.DataFrame, joins: Sequence[dict[str, Any]], key: str) -> pd.DataFrame:
    """Left-join each ``{path, key}`` table (e.g. item or user attributes) onto the rows by ``key``."""
    source = frame.attrs.get("source")
    for number, join in enumerate(joins):
        join_key = f"{key}[{number}]"
        if not isinstance(join, dict) or set(join) != {"path", "key"}:
            raise ConfigError(f"{join_key}: expected {{path: FILE, key: COLUMN}}, got {join!r}")
        key_column = join["key"]
        side = read_table(join["path"], f"{join_key}.path")
        require_columns(side, {key_column: f"{join_key}.key"})
        require_columns(frame, {key_column: f"{join_key}.key"})
        if side[key_column].duplicated().any():
            raise DataError(f"{join_key}: {join['path']} has repeated values in join column '{key_column}'")
        left = frame[key_column].astype(str)
        side = side.set_index(side[key_column].astype(str)).drop(columns=key_column)
        overlap = sorted(set(side.columns) & set(frame.columns))
        if overlap:
            raise DataError(f"{join_key}: {join['path']} repeats column(s) of the rows: {', '.join(overlap)}")
        frame = pd.concat([frame.reset_index(drop=True), side.reindex(left).reset_index(drop=True)], axis=1)
    frame.attrs["source"] = source
    return frame


def split_table(frame: pd.DataFrame, method: str, ratios: Sequence[float], key: str,
                time_column: str | None = None, seed: int = 0) -> tuple[pd.DataFrame, ...]:
    """Train/val/test by ``ratios``: ``random`` (seeded) or ``time`` (ordered by ``time_column``)."""
    if len(ratios) != 3 or any(r < 0 for r in ratios) or abs(sum(ratios) - 1) > 1e-6 or ratios[0] == 0:
        raise ConfigError(f"{key}.ratios: expected three fractions (train, val, test) summing to 1, got {ratios}")
    if method == "random":
        order = np.random.default_rng(seed).permutation(len(frame))
    elif method == "time":
        if time_column is None:
            raise ConfigError(f"{key}.time_column: required for a time-ordered split")
        require_columns(frame, {time_column: f"{key}.time_column"})
        times = pd.to_numeric(frame[time_column], errors="coerce")
        if times.isna().any():
            raise DataError(f"{key}.time_column: column '{time_column}' of {frame.attrs.get('source')} "
                            f"has missing or non-numeric values")
        order = np.argsort(times.to_numpy(), kind="stable")
    else:
        raise ConfigError(f"{key}.method: expected 'random' or 'time', got {method!r}")
    bounds = np.round(np.cumsum(ratios)[:2] * len(frame)).astype(int)
    parts = []
    for name, rows in zip(("train", "val", "test"), np.split(order, bounds)):
        part = frame.iloc[np.sort(rows) if method == "random" else rows]  # keeps file row numbers for messages
        part.attrs["source"] = f"{frame.attrs.get('source')} ({name} split)"
        parts.append(part)
    return tuple(parts)
