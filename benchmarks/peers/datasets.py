"""The two benchmark datasets, their one split each (Parquet files in a cache directory outside the
repository), and what every framework reads from them: feature columns and tasks.

- ``generated``: the click/conversion log of ``benchmarks/throughput.py`` (``generate_log``, imported,
  not copied), 7 id columns and 12 numeric columns, tasks ``click`` and ``conversion`` (binary);
  random 80/10/10 split with a seeded permutation.
- ``ml100k``: MovieLens 100K read in place from ``../shared/data/ml-100k`` (ratings left-joined with
  the user and item tables), tasks ``liked`` (binary, rating >= 4) and ``rating`` (regression);
  time-ordered 80/10/10 split. ``liked`` is written as a column so every framework reads the same label.
  Held out by time over the whole log, ~85% of the validation and test rows are users the training
  split never saw: a cold-start test whose ``liked`` ranking across users rests on ~170 new users'
  demographics.
- ``ml100k-per-user``: the same rows, tasks and features, split within each user: a user's ratings
  in time order, the first 80% for training, the next 10% validation, the last 10% test (every
  ml-100k user has >= 20 ratings, so each user is in all three). Every held-out user is known: the
  warm-user protocol (RecBole's ``group_by: user`` with time order).

Only numpy/pandas here: the split is made once, by this code, and every framework reads the files.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SPLITS = ("train", "val", "test")
ML100K_DIR = REPO.parent / "shared" / "data" / "ml-100k"  # read in place, never copied


@dataclass(frozen=True)
class Dataset:
    name: str
    categorical: tuple[str, ...]           # sparse ids: an embedding each, on every side
    numeric: tuple[str, ...]               # dense floats
    tasks: tuple[tuple[str, str], ...]     # (label column, "binary" | "regression"), in this order everywhere
    split: str                              # description, for the table and README
    params: dict = field(default_factory=dict)

    @property
    def task_names(self) -> list[str]:
        return [name for name, _ in self.tasks]


def generated(rows: int, users: int = 50_000, items: int = 20_000, seed: int = 0) -> Dataset:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from throughput import ID_COLUMNS, NUMERIC_COLUMNS  # noqa: E402  (the benchmark's generator, reused)

    return Dataset("generated", tuple(ID_COLUMNS), tuple(NUMERIC_COLUMNS),
                   (("click", "binary"), ("conversion", "binary")), f"random 80/10/10 (seed {seed})",
                   {"rows": rows, "users": users, "items": items, "seed": seed})


ML100K_SPLITS = {"ml100k": "time-ordered 80/10/10", "ml100k-per-user": "each user's ratings time-ordered 80/10/10"}
NAMES = ("generated", *ML100K_SPLITS)


def ml100k(directory: str | Path, name: str = "ml100k") -> Dataset:
    return Dataset(name, ("user_id", "item_id", "gender", "occupation", "release_year"), ("age",),
                   (("liked", "binary"), ("rating", "regression")), ML100K_SPLITS[name],
                   {"directory": str(Path(directory).resolve()), "per_user": name == "ml100k-per-user"})


def make(name: str, args) -> Dataset:
    if name == "generated":
        return generated(args.rows, args.users, args.items, args.seed)
    if name in ML100K_SPLITS:
        return ml100k(args.ml100k_dir, name)
    raise ValueError(f"unknown dataset {name!r}")


def default_cache() -> Path:
    return Path(os.environ.get("FUSIONREC_PEERS_CACHE", Path(tempfile.gettempdir()) / "fusionrec-peers"))


def split_dir(dataset: Dataset, cache: Path) -> Path:
    if dataset.name == "generated":
        sys.path.insert(0, str(REPO / "benchmarks"))
        from throughput import GENERATOR_VERSION

        p = dataset.params
        return cache / f"generated-r{p['rows']}-u{p['users']}-i{p['items']}-s{p['seed']}-v{GENERATOR_VERSION}"
    return cache / f"{dataset.name}-time-80-10-10"


def split_paths(dataset: Dataset, cache: Path) -> dict[str, Path]:
    directory = split_dir(dataset, cache)
    return {name: directory / f"{name}.parquet" for name in SPLITS}


# --------------------------------------------------------------------------- preparing the split


def _cut(n, ratios=(0.8, 0.1, 0.1)):
    """Where the training and the validation part end, for ``n`` rows (or each of an array of counts)."""
    import numpy as np

    return np.round(np.multiply.outer(n, np.cumsum(ratios)[:2])).astype(int)


def _generated_frame(dataset: Dataset):
    import numpy as np

    sys.path.insert(0, str(REPO / "benchmarks"))
    from throughput import generate_log

    p = dataset.params
    frame = generate_log(p["rows"], p["users"], p["items"], p["seed"])
    order = np.random.default_rng(p["seed"]).permutation(len(frame))
    parts = np.split(order, _cut(len(frame)))
    columns = [*dataset.categorical, *dataset.numeric, *dataset.task_names]
    return {name: frame.iloc[np.sort(rows)][columns].reset_index(drop=True) for name, rows in zip(SPLITS, parts)}


def _read_atomic(path: Path):
    import pandas as pd

    frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, na_values=[""])
    frame.columns = [column.split(":", 1)[0] for column in frame.columns]
    return frame


def _ml100k_frame(dataset: Dataset):
    import numpy as np
    import pandas as pd

    directory = Path(dataset.params["directory"])
    ratings = _read_atomic(directory / "ml-100k.inter")
    items = _read_atomic(directory / "ml-100k.item")[["item_id", "release_year"]]
    users = _read_atomic(directory / "ml-100k.user")[["user_id", "age", "gender", "occupation"]]
    frame = ratings.merge(items, on="item_id", how="left", validate="many_to_one")
    frame = frame.merge(users, on="user_id", how="left", validate="many_to_one")
    frame["rating"] = frame["rating"].astype(float)
    frame["timestamp"] = frame["timestamp"].astype(float).astype("int64")
    frame["age"] = pd.to_numeric(frame["age"]).astype(float)
    frame["liked"] = (frame["rating"] >= 4).astype("int8")
    order = np.argsort(frame["timestamp"].to_numpy(), kind="stable")
    if dataset.params["per_user"]:
        parts = _per_user_parts(frame["user_id"].to_numpy()[order], order)
    else:
        parts = np.split(order, _cut(len(frame)))
    columns = [*dataset.categorical, *dataset.numeric, *dataset.task_names, "timestamp"]
    return {name: frame.iloc[rows][columns].reset_index(drop=True) for name, rows in zip(SPLITS, parts)}


def _per_user_parts(users, order):
    """``order`` (row numbers by time) cut into train/val/test within each user by ``_cut`` of the
    user's row count; each part stays in time order."""
    import numpy as np
    import pandas as pd

    grouped = pd.Series(users).groupby(users, sort=False)
    position = grouped.cumcount().to_numpy()  # 0, 1, ... in time order within each user
    train_end, val_end = _cut(grouped.transform("size").to_numpy()).T
    part = np.where(position < train_end, 0, np.where(position < val_end, 1, 2))
    return [order[part == k] for k in range(len(SPLITS))]


def prepare(dataset: Dataset, cache: Path) -> dict[str, Path]:
    """Write the split once (atomically: a temporary directory renamed into place)."""
    paths = split_paths(dataset, cache)
    directory = split_dir(dataset, cache)
    if all(path.exists() for path in paths.values()):
        return paths
    frames = _generated_frame(dataset) if dataset.name == "generated" else _ml100k_frame(dataset)
    partial = directory.with_name(directory.name + f".{os.getpid()}.partial")
    partial.mkdir(parents=True, exist_ok=True)
    for name, frame in frames.items():
        frame.to_parquet(partial / f"{name}.parquet", index=False)
    if directory.exists():
        shutil.rmtree(directory)
    os.replace(partial, directory)
    return paths


def describe(paths: dict[str, Path], dataset: Dataset) -> dict:
    """Row counts and label base rates / means per split, for the report."""
    import pandas as pd

    out = {}
    for name, path in paths.items():
        frame = pd.read_parquet(path, columns=dataset.task_names)
        out[name] = {"rows": len(frame), **{task: round(float(frame[task].mean()), 4) for task in dataset.task_names}}
    return out
