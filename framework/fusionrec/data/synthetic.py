"""A deterministic synthetic impression log for the quickstart, generated once into a cache.

Users and items have hidden latent vectors; their affinity drives every behaviour, and each
feature carries part of that signal, so a model that learns beats a constant predictor on every
task by a wide margin:

- ``click`` (binary): logistic in affinity, with a per-scenario offset and an hour-of-day effect;
- ``like`` (binary): only after a click, logistic in a second affinity and the user's age;
- ``watch_time`` (regression, minutes): zero without a click, log-normal in affinity after one.

Item tags and user interests reveal the signs of the latent dimensions, so the affinity of a user
never seen in training is partly predictable too.

``scenario_shift`` (0 to 1, ``data.generate: {..., scenario_shift: 1.0}``) makes the scenarios
behave differently, for multi-scenario models; at 0 (the default) the log is exactly the one the
published figures were measured on. With shift ``s``:

- in ``search``, the click affinity (and so watch time) weighs latent dimensions 2 and 3 by
  ``1 - 2s`` instead of 1: at ``s = 1`` users click there what they skip elsewhere on those
  dimensions;
- in ``detail``, likes follow a mix of the other taste, ``(1 - s) * taste(dims 0, 1) + s *
  taste(dims 2, 3)``, so the tasks relate differently there: at ``s = 1`` what a user likes
  follows other latent dimensions than what draws the click.

The random draws are the same whatever the shift: only these formulas change.

``interest_drift`` (0 to 1, ``data.generate: {..., interest_drift: 1.0}``) adds behaviour that only a
user's history reveals. Each user's visits follow a current interest, one item category, that drifts:
after each of the user's events (in time order) it moves on to a new, uniformly drawn category with
probability ``1 / THEME_LENGTH``. With drift ``d``:

- a share ``d / 2`` of the user's impressions show an item of the current interest (a recommender
  already serving the theme), drawn by popularity within that category;
- the click logit gains ``THEME_CLICK_BOOST * d`` when the item is of the current interest.

Nothing in a row says what the current interest is, and a user's id only tells the interests of the
whole month; the categories of the items the user clicked just before give it away. The drift draws
come from a stream of their own (``seed + 1``), so at 0 (the default) the log is the published one.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from fusionrec.errors import ConfigError

GENERATOR_VERSION = 2
SCENARIOS = ("home", "search", "detail")
THEME_LENGTH = 8  # events a current interest lasts, on average (interest_drift)
THEME_CLICK_BOOST = 3.0


def cache_dir() -> Path:
    return Path(os.environ.get("FUSIONREC_CACHE_DIR", Path.home() / ".cache" / "fusionrec"))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _sign_tags(vectors: np.ndarray, prefix: str) -> np.ndarray:
    dims = np.arange(vectors.shape[1])
    names = np.array([f"{prefix}{k}{sign}" for k in dims for sign in "+-"]).reshape(-1, 2)
    chosen = names[dims, (vectors < 0).astype(int)]  # [N, latent]
    return np.array(["|".join(row) for row in chosen])


LATENT = 4


def _latents(users: int, items: int, seed: int) -> tuple[np.random.Generator, np.ndarray, np.ndarray]:
    """The generator's random stream and the hidden user and item vectors drawn first from it."""
    rng = np.random.default_rng(seed)
    return rng, rng.normal(0, 1, (users, LATENT)), rng.normal(0, 1, (items, LATENT))


def _shifted_preferences(user_vec: np.ndarray, item_vec: np.ndarray, scenario: np.ndarray,
                         shift: float) -> tuple[np.ndarray, np.ndarray]:
    """Each row's click affinity and like taste when scenarios differ by ``shift`` (module docstring)."""
    products = user_vec * item_vec  # [N, latent]
    weights = np.ones((len(SCENARIOS), LATENT))
    weights[SCENARIOS.index("search"), 2:] = 1 - 2 * shift
    affinity = (products * weights[scenario]).sum(1) / np.sqrt(LATENT)
    usual, other = products[:, :2].sum(1) / np.sqrt(2), products[:, 2:].sum(1) / np.sqrt(2)
    taste = np.where(scenario == SCENARIOS.index("detail"), (1 - shift) * usual + shift * other, usual)
    return affinity, taste


def _current_interests(user: np.ndarray, categories: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each row's current interest (module docstring): rows are in time order, so a stable sort by
    user lists each user's events in time order; a new interest starts at a user's first event and
    then with probability ``1 / THEME_LENGTH`` after each event."""
    order = np.argsort(user, kind="stable")
    starts = np.ones(len(user), dtype=bool)
    starts[1:] = (user[order][1:] != user[order][:-1]) | (rng.random(len(user) - 1) < 1 / THEME_LENGTH)
    segment = np.cumsum(starts) - 1
    interests = np.empty(len(user), dtype=np.int64)
    interests[order] = rng.choice(categories, segment[-1] + 1)[segment]
    return interests


def _themed_items(item: np.ndarray, interest: np.ndarray, item_category: np.ndarray, popularity: np.ndarray,
                  share: float, rng: np.random.Generator) -> np.ndarray:
    """``item`` with a ``share`` of the rows replaced by an item of their current interest."""
    item = item.copy()
    themed = rng.random(len(item)) < share
    for category in np.unique(interest[themed]):
        rows = np.flatnonzero(themed & (interest == category))
        members = np.flatnonzero(item_category == category)
        weights = popularity[members] / popularity[members].sum()
        item[rows] = rng.choice(members, len(rows), p=weights)
    return item


def generate_impressions(rows: int = 200_000, users: int = 5_000, items: int = 3_000, seed: int = 0,
                         scenario_shift: float = 0.0, interest_drift: float = 0.0) -> pd.DataFrame:
    if not 0 <= scenario_shift <= 1:
        raise ConfigError(f"data.generate.scenario_shift: expected a number from 0 to 1, got {scenario_shift}")
    if not 0 <= interest_drift <= 1:
        raise ConfigError(f"data.generate.interest_drift: expected a number from 0 to 1, got {interest_drift}")
    rng, user_vec, item_vec = _latents(users, items, seed)
    latent = LATENT
    user_age = np.clip(rng.normal(35, 12, users), 16, 80)
    user_segment = np.argmax(user_vec[:, :2] @ rng.normal(0, 1, (2, 6)), axis=1)
    item_category = np.argmax(item_vec @ rng.normal(0, 1, (latent, 20)), axis=1)
    item_price = np.exp(rng.normal(2.5, 0.6, items))
    # Tags reveal the signs of the latent dimensions: item tags describe the item, user interests the user.
    item_tags = _sign_tags(item_vec, "t")
    user_interests = _sign_tags(user_vec, "i")
    item_embedding = (item_vec @ rng.normal(0, 0.5, (latent, 8)) + rng.normal(0, 0.3, (items, 8))).astype(np.float32)

    popularity = 1.0 / np.arange(1, items + 1) ** 0.8
    user = rng.integers(0, users, rows)
    item = rng.choice(items, rows, p=popularity / popularity.sum())
    if interest_drift:
        drift_rng = np.random.default_rng(seed + 1)
        interest = _current_interests(user, np.unique(item_category), drift_rng)
        item = _themed_items(item, interest, item_category, popularity, interest_drift / 2, drift_rng)
    scenario = rng.integers(0, len(SCENARIOS), rows)
    hour = rng.integers(0, 24, rows)
    timestamp = np.sort(rng.integers(1_700_000_000, 1_700_000_000 + 30 * 86_400, rows))

    affinity = np.einsum("ij,ij->i", user_vec[user], item_vec[item]) / np.sqrt(latent)
    taste = np.einsum("ij,ij->i", user_vec[user, :2], item_vec[item, :2]) / np.sqrt(2)
    if scenario_shift:
        affinity, taste = _shifted_preferences(user_vec[user], item_vec[item], scenario, scenario_shift)
    click_logit = -1.0 + 1.8 * affinity + np.array([0.4, -0.6, 0.1])[scenario] + 0.3 * np.cos(hour / 24 * 2 * np.pi)
    if interest_drift:
        click_logit = click_logit + THEME_CLICK_BOOST * interest_drift * (item_category[item] == interest)
    click = rng.random(rows) < _sigmoid(click_logit)
    like_logit = -0.5 + 2.0 * taste + 0.03 * (user_age[user] - 35)
    like = click & (rng.random(rows) < _sigmoid(like_logit))
    watch_time = np.where(click, np.exp(1.0 + 0.6 * affinity + rng.normal(0, 0.3, rows)), 0.0)

    age = user_age[user].round(0)
    age[rng.random(rows) < 0.05] = np.nan  # some users never gave their age
    return pd.DataFrame({
        "user_id": user, "item_id": item, "scenario": np.array(SCENARIOS)[scenario],
        "user_age": age, "user_segment": user_segment[user], "user_interests": user_interests[user],
        "item_category": item_category[item], "item_tags": item_tags[item], "item_price": item_price[item].round(2), "hour": hour,
        "item_embedding": list(item_embedding[item]), "timestamp": timestamp,
        "click": click.astype(np.int8), "like": like.astype(np.int8), "watch_time": watch_time.round(3),
    })


def cache_path(name: str, params: dict, directory: str | Path | None = None) -> Path:
    """Where a generated table lives: the file name hashes every parameter that shapes it."""
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    return Path(directory or cache_dir()) / f"{name}-{digest}.parquet"


def write_once(path: Path, make: Callable[[], pd.DataFrame]) -> Path:
    """Write ``make()`` to ``path`` unless it exists, atomically: a killed run leaves no half file."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.partial")
        make().to_parquet(partial, index=False)
        os.replace(partial, path)
    return path


def quickstart_log(rows: int = 200_000, users: int = 5_000, items: int = 3_000, seed: int = 0,
                   directory: str | Path | None = None, media: bool = False, scenario_shift: float = 0.0,
                   interest_drift: float = 0.0) -> Path:
    """Path of the generated quickstart log, written on first use. With ``media``, every item also
    gets a title, a PNG and a WAV (:mod:`fusionrec.data.synthetic_media`, next to the log) and the
    log the columns ``item_title``, ``item_image`` and ``item_audio`` (absolute paths).
    ``scenario_shift``, ``interest_drift``: see the module docstring."""
    params = {"rows": rows, "users": users, "items": items, "seed": seed, "version": GENERATOR_VERSION}
    if media:
        params["media"] = True
    if scenario_shift:  # only when set, so the logs cached before it existed keep their names
        params["scenario_shift"] = scenario_shift
    if interest_drift:
        params["interest_drift"] = interest_drift
    path = cache_path("synthetic-impressions", params, directory)

    def make() -> pd.DataFrame:
        frame = generate_impressions(rows, users, items, seed, scenario_shift, interest_drift)
        if media:
            from fusionrec.data.synthetic_media import write_item_media

            media_dir = path.with_suffix("")  # a folder beside the log, named like it
            table = write_item_media(_latents(users, items, seed)[2], media_dir, seed)
            for column in ("item_image", "item_audio"):
                table[column] = [str(media_dir / p) if isinstance(p, str) else None for p in table[column]]
            frame = frame.merge(table, on="item_id", how="left")
        return frame

    return write_once(path, make)
