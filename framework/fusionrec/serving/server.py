"""The HTTP scoring service behind ``fusionrec serve``: a FastAPI app over a loaded :class:`Bundle`.

    POST /score      {"rows": {field: [values]}}  (or [{field: value}, ...])  -> {"scores": {task: [...]}}
    POST /recommend  {"user": {field: value}, "items": {field: [values]}, "k": 10, "item_key": "item_id"}
                     -> {"items": [{item_key: id, "score": fused, "scores": {task: s}}, ...]}, best first
                     A retrieval bundle (user and item towers): {"user": {field: value}, "k": 10,
                     "exclude": [keys]} -> {"items": [keys], "scores": [...]}, the top k of its catalogue
    GET  /healthz    {"status": "ok", ...counters}
    GET  /metadata   the bundle's manifest (with the fused score in force)

Each request is checked against the bundle's fields and encoded on its own, so a bad one is
answered 422 (413 when it holds more than ``max_batch_rows`` rows) with ``{"detail": message}``
naming the field and the row, and never reaches the batch it would have shared with others. Every
value is checked (:mod:`fusionrec.serving.features`): nothing a client sends gets a 500. Unknown ids
are not errors: they take the out-of-vocabulary id. docs/serving.md has examples.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fusionrec.errors import ConfigError
from fusionrec.serving.batching import MicroBatcher
from fusionrec.serving.bundle import NO_CATALOGUE, NO_FUSED_SCORE, Bundle
from fusionrec.serving.content import ContentError, existing_file
from fusionrec.serving.features import (MAX_CHARS, MAX_PROBLEMS, RequestError, checked_key, checked_string, listed,
                                         shown)
from fusionrec.serving.fused_score import FusedScore

SCORE_HINT = ("start the service with --score, e.g. fusionrec serve BUNDLE --score '{click: 1, like: 0.5}', "
              "or export the bundle with one")
logger = logging.getLogger("fusionrec.serving")


class Answer(JSONResponse):
    """JSON with every non-ASCII character escaped: a string a client sent may hold a lone surrogate
    (valid JSON, no valid UTF-8), and messages and /recommend's keys send such strings back."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


class KeepServing:
    """The last line behind the request checks: an exception none of them foresaw is logged with its
    traceback and answered 500 without one. Reaching uvicorn, it would close the client's connection."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception as error:
            if started:  # too late for an answer of our own
                raise
            logger.exception("%s %s failed", scope["method"], scope["path"])
            await Answer({"detail": f"internal error ({type(error).__name__}); the service logged it"},
                         status_code=500)(scope, receive, send)


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rows: Any = Field(description="{field: [values]} (one list per field), or [{field: value}, ...] (one object per row)")


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: dict[str, Any] = Field(description="{field: value}: the user's and the context's fields, one value each")
    items: dict[str, list[Any]] = Field(description="{field: [values]}: the candidates' fields and their key")
    k: int = Field(10, ge=1, strict=True,
                   description="how many items to return (fewer when there are fewer candidates)")
    item_key: str = Field("item_id", max_length=MAX_CHARS,
                          description="the items field that identifies a candidate in the answer")


class RetrieveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: dict[str, Any] = Field(description="{field: value}: the user tower's fields, one value each; a history is "
                                             "a list of item ids, [] for a user without one")
    k: int = Field(10, ge=1, strict=True,
                   description="how many items to return (the whole catalogue when it holds fewer)")
    exclude: list[Any] = Field([], description="item keys never returned (keys the catalogue lacks are ignored)")


def columns_of(rows: Any) -> dict[str, list]:
    """``{field: [values]}`` or ``[{field: value}, ...]`` -> ``{field: [values]}``."""
    if isinstance(rows, Mapping):
        for field, values in rows.items():
            if not isinstance(values, list):
                raise RequestError(f"rows.{field:.60}: expected a list with one value per row, got {shown(values)}")
        return dict(rows)
    if isinstance(rows, list) and rows and all(isinstance(row, Mapping) for row in rows):
        fields = list(dict.fromkeys(field for row in rows for field in row))
        for number, row in enumerate(rows):
            if len(row) != len(fields):
                missing = [field for field in fields if field not in row]
                raise RequestError(f"rows[{number}]: missing field(s): {listed(missing)}")
        return {field: [row[field] for row in rows] for field in fields}
    raise RequestError("rows: expected {field: [values]} or a non-empty list of {field: value} objects")


class Scorer:
    """What the endpoints share: the bundle's fields, request checks, the batcher and the fused score."""

    def __init__(self, bundle: Bundle, max_batch_rows: int, max_wait_ms: float, fused_score: FusedScore | None,
                 content_root: Path | None):
        self.bundle, self.max_batch_rows, self.fused_score = bundle, max_batch_rows, fused_score
        self.content_root = content_root.resolve() if content_root is not None else None
        self.file_fields = {field for field, preparer in bundle.preparers.items() if preparer.reads_files}
        self.fields: dict[str, dict] = bundle.manifest["preprocessing"]
        self.batcher = MicroBatcher(bundle.run, max_batch_rows, max_wait_ms)

    def encode(self, columns: dict[str, list], batch: str, sides: Mapping[str, str] | None = None
               ) -> tuple[dict[str, np.ndarray], int]:
        """Check one request's columns against the bundle's fields and encode them; ``batch`` names the
        request's lists in messages, ``sides`` the part of the request a field came from (default: batch)."""
        place = {field: f"{(sides or {}).get(field, batch)}.{field}" for field in columns}
        unknown = [place[field] for field in columns if field not in self.fields]
        if unknown:
            raise RequestError(f"unknown field(s) {listed(unknown)}; the bundle's fields: {', '.join(self.fields)}")
        rows = max((len(values) for values in columns.values()), default=0)
        if rows > self.max_batch_rows:
            raise HTTPException(413, f"{batch}: {rows} rows, more than this service's --max-batch-rows "
                                     f"{self.max_batch_rows}; split the request")
        columns = {field: self._files(values, place[field]) if field in self.file_fields else values
                   for field, values in columns.items()}
        inputs = self.bundle.encode(columns, labels=place)  # every value's type, range and length
        if rows == 0:
            raise RequestError(f"{batch}: no rows")
        return inputs, rows

    def _files(self, cells: list, place: str) -> list:
        """``_file`` for each cell of an image or audio column, each distinct path resolved once (a
        ``/recommend`` user's file is repeated on every candidate's row)."""
        resolved: dict[str, Any] = {}
        for row, cell in enumerate(cells):
            if isinstance(cell, str) and cell not in resolved:
                resolved[cell] = self._file(cell, place, row)
        return [resolved[cell] if isinstance(cell, str) else cell for cell in cells]

    def _file(self, cell: Any, place: str, row: int) -> Any:
        """An image or audio cell: a path is read only under --content-root (relative to it), so that a
        client cannot make the service open any file on its machine; item vectors always pass."""
        if not isinstance(cell, str) or not checked_string(cell, place, row).strip():
            return cell
        if self.content_root is None:
            raise RequestError(f"{place}: row {row}: this service reads no files (start it with --content-root "
                               f"DIR to allow files under DIR); send the item's vector instead")
        if "\0" in cell:  # the operating system cannot take it; Path.resolve raises
            raise RequestError(f"{place}: row {row}: a path with a NUL character")
        try:
            path = (self.content_root / cell.strip()).resolve()
        except RuntimeError:  # Python < 3.13 raises on a loop of symbolic links
            raise RequestError(f"{place}: row {row}: {shown(cell)}: a loop of symbolic links") from None
        except OSError as error:
            raise RequestError(f"{place}: row {row}: {shown(cell)}: cannot open: {error.strerror}") from None
        if not path.is_relative_to(self.content_root):
            raise RequestError(f"{place}: row {row}: {shown(cell)} is outside --content-root {self.content_root}")
        try:
            return str(existing_file(path))
        except ContentError as error:  # said here, where the row and the path as sent are known
            raise RequestError(f"{place}: row {row}: {shown(cell)}: {error}") from None

    async def score(self, columns: dict[str, list], batch: str, sides: Mapping[str, str] | None = None
                    ) -> dict[str, np.ndarray]:
        # Off the event loop: content fields (text, image, audio) run their item encoders while encoding.
        inputs, rows = await asyncio.to_thread(self.encode, columns, batch, sides)
        scores = await self.batcher.submit(inputs, rows)
        for task, values in scores.items():
            unscored(values, f"{batch}: task {task}")
        return scores


def unscored(scores: np.ndarray, where: str) -> None:
    """Refuse rows whose score is not finite: inputs within float32 can still overflow inside the model
    (a number far outside the training range), and JSON has no inf or NaN to answer with."""
    bad = np.flatnonzero(~np.isfinite(scores.reshape(len(scores), -1)).all(axis=1))
    if len(bad):
        raise RequestError(f"{where}: row(s) {', '.join(map(str, bad[:MAX_PROBLEMS]))}: the score is not finite; "
                           f"a number in the row is too far outside the values the model was trained on")


def _problem(problem: Mapping[str, Any]) -> str:
    """One pydantic problem with the request's envelope -> ``where: what``."""
    where = ".".join(f"{part:.40}" if isinstance(part, str) else str(part) for part in problem["loc"][1:])
    if problem["type"] == "json_invalid":
        return f"body: not JSON ({problem['ctx']['error']} at character {where})"
    return f"{where or 'body'}: {problem['msg']}"


def create_app(bundle: Bundle, *, max_batch_rows: int = 1024, max_wait_ms: float = 0.0,
               fused_score: FusedScore | None = None, content_root: str | Path | None = None) -> FastAPI:
    """The service for a loaded (and checked) ``bundle``. ``fused_score`` orders ``/recommend``;
    without it the manifest's ``fused_score`` does, if it has one. ``content_root``: the directory
    image and audio paths in requests are read from (without it, such fields take item vectors)."""
    if max_batch_rows < 1 or not 0 <= max_wait_ms < float("inf"):
        raise ConfigError(f"--max-batch-rows must be >= 1 and --max-wait-ms a finite number >= 0, got {max_batch_rows} "
                          f"and {max_wait_ms}")
    manifest = bundle.manifest
    if bundle.retrieval and fused_score is not None:
        raise ConfigError(f"--score: {NO_FUSED_SCORE}")
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
    try:
        metadata = Answer(metadata).body  # rendered once; a manifest JSON cannot carry would fail every /metadata
    except ValueError:
        raise ConfigError(f"{bundle.directory / 'manifest.json'}: holds an inf or NaN, which JSON cannot carry; "
                          f"export the bundle again") from None

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await scorer.batcher.start()
        yield
        await scorer.batcher.stop()

    app = FastAPI(title="fusionrec scoring service", lifespan=lifespan, default_response_class=Answer,
                  description=f"Scores rows with the bundle {bundle.directory.name}: tasks {', '.join(bundle.tasks)}.")
    app.state.scorer = scorer
    app.add_middleware(KeepServing)

    @app.exception_handler(RequestError)
    async def request_error(request: Request, error: RequestError) -> JSONResponse:
        return Answer({"detail": str(error)}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def envelope_error(request: Request, error: RequestValidationError) -> JSONResponse:
        # One message like the other errors, instead of pydantic's list of error objects.
        return Answer({"detail": listed([_problem(problem) for problem in error.errors()], "; ")}, status_code=422)

    @app.post("/score")
    async def score(request: ScoreRequest) -> JSONResponse:
        scores = await scorer.score(columns_of(request.rows), "rows")
        return Answer({"scores": {task: value.tolist() for task, value in scores.items()}})

    async def retrieve(request: RetrieveRequest) -> JSONResponse:
        if bundle.catalogue_vectors is None:
            raise HTTPException(400, f"/recommend: {NO_CATALOGUE}")
        labels = {field: f"user.{field:.60}" for field in request.user}
        # A user-side image or audio file is read only under --content-root, as in /score.
        user = {field: scorer._files([value], labels[field])[0] if field in scorer.file_fields else value
                for field, value in request.user.items()}
        # Off the event loop: the user tower and the catalogue's scores take a while on a large one.
        top = await asyncio.to_thread(bundle.recommend, user, request.k, request.exclude, labels)
        unscored(top["scores"][None], "user")
        return Answer({"items": top["items"], "scores": top["scores"].tolist()})

    if bundle.retrieval:
        app.post("/recommend")(retrieve)

    async def recommend(request: RecommendRequest) -> JSONResponse:
        if scorer.fused_score is None:
            raise HTTPException(400, f"/recommend needs a fused score and this service has none: {SCORE_HINT}")
        items = dict(request.items)
        lengths = {field: len(values) for field, values in items.items()}
        if len(set(lengths.values())) > 1:
            raise RequestError(f"items: the lists differ in length: {shown(lengths)}")
        if request.item_key not in items:
            raise RequestError(f"items: no {shown(request.item_key)} list, the item_key that names the candidates")
        keys = items[request.item_key] if request.item_key in scorer.fields else items.pop(request.item_key)
        where = f"items.{request.item_key:.60}"
        for row, key in enumerate(keys):  # sent back as they came: a name, not any JSON value
            checked_key(key, where, row, "the candidate")
        both = sorted(set(request.user) & set(items))
        if both:
            raise RequestError(f"user and items both hold {listed(both)}; give each field once")
        columns = {**{field: [value] * len(keys) for field, value in request.user.items()}, **items}
        scores = await scorer.score(columns, "items", {field: "user" for field in request.user})
        fused = scorer.fused_score(scores)
        unscored(fused, "items: the fused score")
        best = np.argsort(-fused, kind="stable")[:request.k]
        return Answer({"items": [
            {request.item_key: keys[row], "score": float(fused[row]),
             "scores": {task: value[row].tolist() for task, value in scores.items()}} for row in best]})

    if not bundle.retrieval:
        app.post("/recommend")(recommend)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        batcher = scorer.batcher
        return {"status": "ok", "requests": batcher.requests, "model_runs": batcher.runs, "rows": batcher.rows}

    @app.get("/metadata")
    async def get_metadata() -> Response:
        return Response(metadata, media_type="application/json")

    return app
