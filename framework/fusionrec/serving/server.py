"""The HTTP scoring service behind ``fusionrec serve``: a FastAPI app over a loaded :class:`Bundle`.

    POST /score      {"rows": {field: [values]}}  (or [{field: value}, ...])  -> {"scores": {task: [...]}}
    POST /recommend  {"user": {field: value}, "items": {field: [values]}, "k": 10, "item_key": "item_id"}
                     -> {"items": [{item_key: id, "score": fused, "scores": {task: s}}, ...]}, best first
    GET  /healthz    {"status": "ok", ...counters}
    GET  /metadata   the bundle's manifest (with the fused score in force)

Each request is checked against the bundle's fields and encoded on its own, so a bad one is
answered 422 (413 when it holds more than ``max_batch_rows`` rows) with ``{"detail": message}``
naming the field, and never reaches the batch it would have shared with others. Unknown ids are not
errors: they take the out-of-vocabulary id. docs/serving.md has examples.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from fusionrec.errors import ConfigError
from fusionrec.serving.batching import MicroBatcher
from fusionrec.serving.bundle import Bundle
from fusionrec.serving.features import RequestError
from fusionrec.serving.fused_score import FusedScore

SCORE_HINT = ("start the service with --score, e.g. fusionrec serve BUNDLE --score '{click: 1, like: 0.5}', "
              "or export the bundle with one")
# The JSON shape of one cell per feature type; the encoder checks the values themselves.
SCALAR_TYPES = {"categorical", "numeric"}
SCALAR = (str, int, float, bool, type(None))


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rows: Any = Field(description="{field: [values]} (one list per field), or [{field: value}, ...] (one object per row)")


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: dict[str, Any] = Field(description="{field: value}: the user's and the context's fields, one value each")
    items: dict[str, list[Any]] = Field(description="{field: [values]}: the candidates' fields and their key")
    k: int = Field(10, ge=1, description="how many items to return (fewer when there are fewer candidates)")
    item_key: str = Field("item_id", description="the items field that identifies a candidate in the answer")


def columns_of(rows: Any) -> dict[str, list]:
    """``{field: [values]}`` or ``[{field: value}, ...]`` -> ``{field: [values]}``."""
    if isinstance(rows, Mapping):
        for field, values in rows.items():
            if not isinstance(values, list):
                raise RequestError(f"rows.{field}: expected a list with one value per row, got {values!r:.80}")
        return dict(rows)
    if isinstance(rows, list) and rows and all(isinstance(row, Mapping) for row in rows):
        fields = list(dict.fromkeys(field for row in rows for field in row))
        for number, row in enumerate(rows):
            if len(row) != len(fields):
                missing = [field for field in fields if field not in row]
                raise RequestError(f"rows[{number}]: missing field(s): {', '.join(missing)}")
        return {field: [row[field] for row in rows] for field in fields}
    raise RequestError("rows: expected {field: [values]} or a non-empty list of {field: value} objects")


class Scorer:
    """What the endpoints share: the bundle's fields, request checks, the batcher and the fused score."""

    def __init__(self, bundle: Bundle, max_batch_rows: int, max_wait_ms: float, fused_score: FusedScore | None,
                 content_root: Path | None):
        self.bundle, self.max_batch_rows, self.fused_score = bundle, max_batch_rows, fused_score
        self.content_root = content_root.resolve() if content_root is not None else None
        self.file_fields = {field for field, entry in bundle.content_fields.items()
                            if entry["content"]["kind"] != "text"}
        self.fields: dict[str, dict] = bundle.manifest["preprocessing"]
        self.batcher = MicroBatcher(bundle.run, max_batch_rows, max_wait_ms)

    def encode(self, columns: dict[str, list], batch: str, sides: Mapping[str, str] | None = None
               ) -> tuple[dict[str, np.ndarray], int]:
        """Check one request's columns against the bundle's fields and encode them; ``batch`` names the
        request's lists in messages, ``sides`` the part of the request a field came from (default: batch)."""
        place = {field: f"{(sides or {}).get(field, batch)}.{field}" for field in columns}
        unknown = [place[field] for field in columns if field not in self.fields]
        if unknown:
            raise RequestError(f"unknown field(s) {', '.join(unknown)}; the bundle's fields: {', '.join(self.fields)}")
        rows = max((len(values) for values in columns.values()), default=0)
        if rows > self.max_batch_rows:
            raise HTTPException(413, f"{batch}: {rows} rows, more than this service's --max-batch-rows "
                                     f"{self.max_batch_rows}; split the request")
        for field, values in columns.items():
            self._check_cells(self.fields[field]["type"], values, place[field])
        columns = {field: [self._file(cell, place[field], row) if field in self.file_fields else cell
                           for row, cell in enumerate(values)] for field, values in columns.items()}
        inputs = self.bundle.encode(columns)  # missing fields, lengths, numbers, vector widths
        if rows == 0:
            raise RequestError(f"{batch}: no rows")
        return inputs, rows

    def _file(self, cell: Any, place: str, row: int) -> Any:
        """An image or audio cell: a path is read only under --content-root (relative to it), so that a
        client cannot make the service open any file on its machine; item vectors always pass."""
        if not isinstance(cell, str) or not cell.strip():
            return cell
        if self.content_root is None:
            raise RequestError(f"{place}: row {row}: this service reads no files (start it with --content-root "
                               f"DIR to allow files under DIR); send the item's vector instead")
        path = (self.content_root / cell.strip()).resolve()
        if not path.is_relative_to(self.content_root):
            raise RequestError(f"{place}: row {row}: {cell!r} is outside --content-root {self.content_root}")
        return str(path)

    @staticmethod
    def _check_cells(kind: str, values: list, place: str) -> None:
        for row, cell in enumerate(values):
            if kind in SCALAR_TYPES:
                wrong = not isinstance(cell, SCALAR)
                expected = "one value"
            elif kind == "multi_categorical":
                wrong = not (isinstance(cell, (str, type(None))) or
                             isinstance(cell, list) and all(isinstance(part, SCALAR) for part in cell))
                expected = "a separated string or a list of values"
            elif kind == "vector":
                wrong = not (cell is None or isinstance(cell, list) and
                             all(isinstance(part, (int, float)) and not isinstance(part, bool) for part in cell))
                expected = "a list of numbers"
            else:  # media and later types: their encoder judges
                return
            if wrong:
                raise RequestError(f"{place}: expected {expected} per row ({kind} field), got {cell!r:.80} (row {row})")

    async def score(self, columns: dict[str, list], batch: str, sides: Mapping[str, str] | None = None
                    ) -> dict[str, np.ndarray]:
        # Off the event loop: content fields (text, image, audio) run their item encoders while encoding.
        inputs, rows = await asyncio.to_thread(self.encode, columns, batch, sides)
        return await self.batcher.submit(inputs, rows)


def create_app(bundle: Bundle, *, max_batch_rows: int = 1024, max_wait_ms: float = 0.0,
               fused_score: FusedScore | None = None, content_root: str | Path | None = None) -> FastAPI:
    """The service for a loaded (and checked) ``bundle``. ``fused_score`` orders ``/recommend``;
    without it the manifest's ``fused_score`` does, if it has one. ``content_root``: the directory
    image and audio paths in requests are read from (without it, such fields take item vectors)."""
    if max_batch_rows < 1 or max_wait_ms < 0:
        raise ConfigError(f"--max-batch-rows must be >= 1 and --max-wait-ms >= 0, got {max_batch_rows} "
                          f"and {max_wait_ms}")
    manifest = bundle.manifest
    if fused_score is None and manifest.get("fused_score"):
        entry = manifest["fused_score"]
        fused_score = FusedScore.parse(entry["terms"], entry.get("combine", "product"), bundle.tasks,
                                       key="manifest.json fused_score.terms")
    for task in fused_score.terms if fused_score else ():
        if manifest["outputs"][task]["shape"] != ["batch"]:
            raise ConfigError(f"--score.{task}: task {task!r} serves several scores per row; only tasks with "
                              f"one score per row can be fused")
    scorer = Scorer(bundle, max_batch_rows, max_wait_ms, fused_score,
                    Path(content_root) if content_root is not None else None)
    metadata = {**manifest, "fused_score": fused_score.as_dict() if fused_score else None}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await scorer.batcher.start()
        yield
        await scorer.batcher.stop()

    app = FastAPI(title="fusionrec scoring service", lifespan=lifespan,
                  description=f"Scores rows with the bundle {bundle.directory.name}: tasks {', '.join(bundle.tasks)}.")
    app.state.scorer = scorer

    @app.exception_handler(RequestError)
    async def request_error(request: Request, error: RequestError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def envelope_error(request: Request, error: RequestValidationError) -> JSONResponse:
        # One message like the other errors, instead of pydantic's list of error objects.
        problems = ["{}: {}".format(".".join(str(part) for part in problem["loc"][1:]) or "body", problem["msg"])
                    for problem in error.errors()]
        return JSONResponse({"detail": "; ".join(problems)}, status_code=422)

    @app.post("/score")
    async def score(request: ScoreRequest) -> JSONResponse:
        scores = await scorer.score(columns_of(request.rows), "rows")
        return JSONResponse({"scores": {task: value.tolist() for task, value in scores.items()}})

    @app.post("/recommend")
    async def recommend(request: RecommendRequest) -> JSONResponse:
        if scorer.fused_score is None:
            raise HTTPException(400, f"/recommend needs a fused score and this service has none: {SCORE_HINT}")
        items = dict(request.items)
        lengths = {field: len(values) for field, values in items.items()}
        if len(set(lengths.values())) > 1:
            raise RequestError(f"items: the lists differ in length: {lengths}")
        if request.item_key not in items:
            raise RequestError(f"items: no {request.item_key!r} list, the item_key that names the candidates")
        keys = items[request.item_key] if request.item_key in scorer.fields else items.pop(request.item_key)
        both = sorted(set(request.user) & set(items))
        if both:
            raise RequestError(f"user and items both hold {', '.join(both)}; give each field once")
        columns = {**{field: [value] * len(keys) for field, value in request.user.items()}, **items}
        scores = await scorer.score(columns, "items", {field: "user" for field in request.user})
        fused = scorer.fused_score(scores)
        best = np.argsort(-fused, kind="stable")[:request.k]
        return JSONResponse({"items": [
            {request.item_key: keys[row], "score": float(fused[row]),
             "scores": {task: value[row].tolist() for task, value in scores.items()}} for row in best]})

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        batcher = scorer.batcher
        return {"status": "ok", "requests": batcher.requests, "model_runs": batcher.runs, "rows": batcher.rows}

    @app.get("/metadata")
    async def get_metadata() -> dict[str, Any]:
        return metadata

    return app
