"""fusionrec serve against a hostile client: every endpoint is fed values JSON can carry and the model
cannot take (and malformed requests of every kind) over one keep-alive connection to a real uvicorn
server. None may get a 5xx or make the service log an error, each gets the status and a detail naming
the field (and row), and the next valid request succeeds on the same connection."""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import socket
import threading
import time

import httpx
import numpy as np
import pytest
import uvicorn
import yaml
from conftest import QUICKSTART, small_config, write_config
from test_serve import CLICK_AND_LIKE, bundle_dir, golden, user_and_items  # noqa: F401 (fixtures)

from fusionrec.cli import main
from fusionrec.errors import ConfigError
from fusionrec.serving import load, load_onnx
from fusionrec.serving.fused_score import FusedScore
from fusionrec.serving.server import create_app

MAX_BATCH_ROWS = 64
BIG = 10 ** 6  # elements in the longest arrays sent: a few megabytes of JSON


class Service:
    """A uvicorn server in a thread, one httpx client (one keep-alive connection) and the error records
    the service logged."""

    def __init__(self, app):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        # log_config=None: uvicorn's loggers propagate to the root logger, where errors are collected.
        self.server = uvicorn.Server(uvicorn.Config(app, port=port, log_config=None, timeout_keep_alive=60))
        self.errors: list[logging.LogRecord] = []
        self.handler = logging.Handler(logging.ERROR)
        self.handler.emit = self.errors.append
        # Only what this service's thread logs: several services may run at once.
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.handler.addFilter(lambda record: record.thread == self.thread.ident)
        logging.getLogger().addHandler(self.handler)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the service did not start"
            time.sleep(0.05)
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)

    def send(self, method: str, path: str, body=None, content_type: str | None = "application/json") -> httpx.Response:
        if body is not None and not isinstance(body, (str, bytes)):
            body = json.dumps(body)  # allow_nan: NaN and Infinity go out as Python's json writes them
        headers = {"content-type": content_type} if content_type else {}
        return self.client.request(method, path, content=body, headers=headers)

    def close(self) -> None:
        self.client.close()
        self.server.should_exit = True
        self.thread.join(30)
        logging.getLogger().removeHandler(self.handler)


def connection(response: httpx.Response) -> tuple:
    return response.extensions["network_stream"].get_extra_info("client_addr")


def assert_answered_and_still_serving(service: Service, response: httpx.Response, status: int, detail: str | None,
                                      valid: tuple) -> None:
    method = response.request.method
    assert response.status_code == status, response.text[:500]
    assert "Traceback" not in response.text and not service.errors, [r.getMessage() for r in service.errors]
    if status >= 400 and method != "HEAD":
        message = response.json()["detail"]
        assert detail is None or detail in message, message
        assert len(message) < 1000  # short, whatever the size of what was sent
    after = service.send(*valid)
    assert after.status_code == 200, after.text[:500]
    assert connection(after) == connection(response), "the service dropped the keep-alive connection"


# ---------------------------------------------------------------------------------------------------------------------
# The tabular bundle (tests/test_serve.py's): /score, /recommend, /healthz, /metadata, unknown paths and methods
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def service(bundle_dir):
    bundle = load_onnx(bundle_dir)
    app = create_app(bundle, max_batch_rows=MAX_BATCH_ROWS,
                     fused_score=FusedScore.parse(CLICK_AND_LIKE, "product", bundle.tasks))
    service = Service(app)
    yield service
    service.close()


def _rows(golden: dict, field: str, value, row: int = 3) -> dict:
    """The golden rows with one cell replaced."""
    rows = copy.deepcopy(golden)
    rows[field][row] = value
    return {"rows": rows}


def _raw(body: dict, token: str) -> str:
    """``body`` as JSON with the string "TOKEN" replaced by ``token``: numbers json.dumps cannot write."""
    return json.dumps(body).replace('"TOKEN"', token)


def _depth(levels: int) -> str:
    return "[" * levels + "]" * levels


# (id, field, value written in place of golden row 3, status, detail): one cell of /score.
CELLS = [
    # numeric: JSON numbers beyond float64 (read as inf), beyond float32 once standardised, NaN (missing)
    ("price 1e308", "item_price", 1e308, 422, "rows.item_price: row 3: 1e+308 is not a finite float32 number"),
    ("price 3e39", "item_price", 3e39, 422, "rows.item_price: row 3: 3e+39 is not a finite float32 number once"),
    ("price 3e38 fits float32 once standardised", "item_price", 3e38, 200, None),
    ("price 1e400", "item_price", "=1e400", 422, "rows.item_price: row 3: inf is not a finite number"),
    ("price -1e400", "item_price", "=-1e400", 422, "rows.item_price: row 3: -inf is not a finite number"),
    ("price Infinity", "item_price", "=Infinity", 422, "rows.item_price: row 3: inf is not a finite number"),
    ("price -Infinity", "item_price", "=-Infinity", 422, "rows.item_price: row 3: -inf is not a finite number"),
    ("price NaN is missing", "item_price", "=NaN", 200, None),
    ("price 10**40", "item_price", 10 ** 40, 422, "rows.item_price: row 3: 1000"),
    ("price 10**4000", "item_price", 10 ** 4000, 422, "rows.item_price: row 3: 1000"),
    ("price of 5000 digits", "item_price", "=1" + "0" * 5000, 400, None),  # Python's json refuses to read it
    ("price '1e999'", "item_price", "1e999", 422, "rows.item_price: row 3: '1e999' is not a finite number"),
    ("price 'nan' is missing", "item_price", "nan", 200, None),
    ("price empty string", "item_price", "", 422, "rows.item_price: row 3: expected a number, got ''"),
    ("price huge string", "item_price", "9" * 100_000, 422, "rows.item_price: row 3: a string of 100000 characters"),
    ("price object", "item_price", {"value": 1}, 422, "rows.item_price: row 3: expected a number, got {'value': 1}"),
    ("price list", "item_price", [1.0], 422, "rows.item_price: row 3: expected a number, got [1.0]"),
    ("price -0.0", "item_price", -0.0, 200, None),
    ("age 1e-320 (subnormal)", "user_age", 1e-320, 200, None),
    # categorical: ids are matched as strings; any finite number is an id (an unknown one), inf is none
    ("id 10**40 is unknown", "user_id", 10 ** 40, 200, None),
    ("id 1e300 is unknown", "user_id", 1e300, 200, None),
    ("id -0.0 is 0", "user_id", -0.0, 200, None),
    ("id 10**4000 is unknown", "user_id", 10 ** 4000, 200, None),
    ("id Infinity", "user_id", "=Infinity", 422, "rows.user_id: row 3: inf is not an id"),
    ("id 1e400", "user_id", "=1e400", 422, "rows.user_id: row 3: inf is not an id"),
    ("id NaN is missing", "user_id", "=NaN", 200, None),
    ("id true", "user_id", True, 200, None),
    ("id empty string", "user_id", "", 200, None),
    ("id unicode", "user_id", "用户🙂\u200b\u0000", 200, None),
    ("id lone surrogate", "user_id", "=\"\\udcff\"", 422, "rows.user_id: row 3: '\\udcff' is not valid Unicode"),
    ("id 5000 characters", "user_id", "u" * 5000, 422, "rows.user_id: row 3: a string of 5000 characters, more than"),
    ("id list", "user_id", ["u1"], 422, "rows.user_id: row 3: expected one id (a string or a number), got ['u1']"),
    ("id object", "user_id", {"id": 1}, 422, "rows.user_id: row 3: expected one id"),
    ("id nested 900 deep", "user_id", "=" + _depth(900), 422, "rows.user_id: row 3: expected one id"),
    ("id nested 100000 deep", "user_id", "=" + _depth(100_000), 400, None),
    ("scenario 10**6 characters", "scenario", "s" * BIG, 422, "rows.scenario: row 3: a string of 1000000 characters"),
    # multi_categorical
    ("tags Infinity", "item_tags", "=[\"t1+\", Infinity]", 422, "rows.item_tags: row 3: inf is not an id"),
    ("tags nested", "item_tags", [["t1+"]], 422, "rows.item_tags: row 3: expected one id"),
    ("tags object", "item_tags", {"t1+": 1}, 422, "rows.item_tags: row 3: expected a separated string or a list"),
    ("tags number", "item_tags", 7, 422, "rows.item_tags: row 3: expected a separated string or a list"),
    ("tags 10**6 values", "item_tags", [0] * BIG, 422,
     "rows.item_tags: row 3: expected a separated string or a list of at most 1024"),
    ("tags 1024 values", "item_tags", ["t1+"] * 1024, 200, None),
    ("tags long string", "item_tags", "t1+|" * 2000, 422, "rows.item_tags: row 3: a string of 8000 characters"),
    ("tags lone surrogate", "item_tags", "=[\"\\ud800\"]", 422,
     "rows.item_tags: row 3: '\\ud800' is not valid Unicode"),
    ("tags empty", "item_tags", [], 200, None),
    ("tags huge ints", "item_tags", [10 ** 40, -(10 ** 400)], 200, None),
    # vector: finite float32 numbers, exactly width of them
    ("vector NaN", "item_embedding", "=[0, 0, 0, 0, 0, 0, 0, NaN]", 422,
     "rows.item_embedding: row 3: element 7: nan is not a finite float32 number"),
    ("vector Infinity", "item_embedding", "=[Infinity, 0, 0, 0, 0, 0, 0, 0]", 422,
     "rows.item_embedding: row 3: element 0: inf is not a finite float32 number"),
    ("vector 1e400", "item_embedding", "=[0, 1e400, 0, 0, 0, 0, 0, 0]", 422, "element 1: inf is not a finite float32"),
    ("vector 1e39", "item_embedding", [0.0] * 7 + [1e39], 422, "element 7: 1e+39 is not a finite float32 number"),
    ("vector 10**40", "item_embedding", [10 ** 40] + [0] * 7, 422, "element 0: 1000"),
    ("vector 10**400", "item_embedding", [10 ** 400] + [0] * 7, 422, "element 0: 1000"),
    ("vector float32 max", "item_embedding", [3.4028234663852886e38] + [0.0] * 7, 200, None),
    ("vector strings", "item_embedding", ["1"] * 8, 422, "rows.item_embedding: row 3: expected a list of 8 numbers"),
    ("vector bools", "item_embedding", [True] * 8, 422, "rows.item_embedding: row 3: expected a list of 8 numbers"),
    ("vector nested", "item_embedding", [[0.0] * 8], 422, "rows.item_embedding: row 3: expected a list of 8 numbers"),
    ("vector object element", "item_embedding", [0.0] * 7 + [{}], 422, "expected a list of 8 numbers, got [0.0, 0.0"),
    ("vector string", "item_embedding", "0,0,0,0,0,0,0,0", 422, "expected a list of 8 numbers"),
    ("vector empty", "item_embedding", [], 422, "expected a list of 8 numbers, got []"),
    ("vector 10**6 long", "item_embedding", [0.0] * BIG, 422, "expected a list of 8 numbers"),
    ("vector null is zeros", "item_embedding", None, 200, None),
]

# (id, body of /score, status, detail)
SCORE_BODIES = [
    ("not JSON", "{rows:", 422, "body: not JSON"),
    ("empty body", "", 422, "body: Field required"),
    ("JSON null", "null", 422, "body:"),
    ("JSON array", "[]", 422, "body:"),
    ("JSON string", '"rows"', 422, "body:"),
    ("JSON number", "1e400", 422, "body:"),
    ("invalid UTF-8", b'{"rows": {"user_id": ["\xff\xfe"]}}', 400, None),
    ("nested 100000 deep", _depth(100_000), 400, None),
    ("extra key", {"rows": {}, "columns": {}}, 422, "columns: Extra inputs are not permitted"),
    ("rows null", {"rows": None}, 422, "rows: expected {field: [values]}"),
    ("rows number", {"rows": 5}, 422, "rows: expected {field: [values]}"),
    ("rows string", {"rows": "user_id=7"}, 422, "rows: expected {field: [values]}"),
    ("rows empty list", {"rows": []}, 422, "rows: expected {field: [values]}"),
    ("rows list of numbers", {"rows": [1, 2]}, 422, "rows: expected {field: [values]}"),
    ("rows empty object", {"rows": {}}, 422, "missing field(s): user_id"),
    ("rows [{}]", {"rows": [{}]}, 422, "missing field(s): user_id"),
    ("a column that is a number", {"rows": {"user_id": 5}}, 422,
     "rows.user_id: expected a list with one value per row"),
    ("a column that is an object", {"rows": {"user_id": {"0": "u1"}}}, 422, "rows.user_id: expected a list"),
    ("a field name of 10**5 characters", {"rows": {"x" * 100_000: [1]}}, 422, "unknown field(s) rows.xxx"),
    ("10**4 unknown fields", {"rows": {f"f{i}": [1] for i in range(10_000)}}, 422, "and 9997 more"),
    ("a field name with a lone surrogate", '{"rows": {"\\udcff": [1]}}', 422, "unknown field(s) rows.\udcff"),
    ("10**6 rows", {"rows": {"hour": [0] * BIG}}, 413,
     "rows: 1000000 rows, more than this service's --max-batch-rows 64"),
]


@pytest.mark.parametrize("field, value, status, detail", [case[1:] for case in CELLS], ids=[case[0] for case in CELLS])
def test_a_hostile_cell_in_score_is_refused_naming_field_and_row(service, golden, field, value, status, detail):
    if isinstance(value, str) and value.startswith("="):  # a JSON token json.dumps cannot write
        body = _raw(_rows(golden, field, "TOKEN"), value[1:])
    else:
        body = _rows(golden, field, value)
    response = service.send("POST", "/score", body)
    assert_answered_and_still_serving(service, response, status, detail, ("POST", "/score", {"rows": golden}))
    if status == 200:
        scores = response.json()["scores"]
        assert all(np.isfinite(values).all() for values in scores.values())


def test_nan_is_a_missing_value_as_in_training(service, golden):
    def scores(field: str, token: str) -> dict:
        return service.send("POST", "/score", _raw(_rows(golden, field, "TOKEN"), token)).json()["scores"]

    assert scores("item_price", "NaN") == scores("item_price", '"nan"') == scores("item_price", "null")
    assert scores("item_price", "NaN") != scores("item_price", "20.0")
    assert scores("user_id", "NaN") == scores("user_id", "null") == scores("user_id", '"never-seen"')


@pytest.mark.parametrize("body, status, detail", [case[1:] for case in SCORE_BODIES], ids=[c[0] for c in SCORE_BODIES])
def test_a_malformed_score_request_is_refused(service, golden, body, status, detail):
    response = service.send("POST", "/score", body)
    assert_answered_and_still_serving(service, response, status, detail, ("POST", "/score", {"rows": golden}))


def test_rows_as_objects_and_duplicate_keys(service, golden):
    valid = ("POST", "/score", {"rows": golden})
    objects = [{field: values[row] for field, values in golden.items()} for row in range(8)]
    extra = copy.deepcopy(objects)
    extra[5]["colour"] = "red"
    assert_answered_and_still_serving(service, service.send("POST", "/score", {"rows": extra}), 422,
                                      "rows[0]: missing field(s): colour", valid)
    objects[6]["item_price"] = 1e300
    assert_answered_and_still_serving(service, service.send("POST", "/score", {"rows": objects}), 422,
                                      "rows.item_price: row 6: 1e+300 is not a finite float32 number", valid)
    # JSON allows a key twice; the last one counts, as for Python's json.
    twice = '{"rows": "not rows", "rows": %s}' % json.dumps(golden)
    assert_answered_and_still_serving(service, service.send("POST", "/score", twice), 200, None, valid)
    lengths = {**golden, "hour": golden["hour"][:2]}
    assert_answered_and_still_serving(service, service.send("POST", "/score", {"rows": lengths}), 422,
                                      "fields differ in length", valid)


@pytest.mark.parametrize("content_type, status", [
    ("text/plain", 422), (None, 422), ("application/x-www-form-urlencoded", 422),
    ("application/json; charset=latin-1", 200), ("application/vnd.api+json", 200)])
def test_content_types(service, golden, content_type, status):
    response = service.send("POST", "/score", {"rows": golden}, content_type=content_type)
    assert_answered_and_still_serving(service, response, status, "body:" if status == 422 else None,
                                      ("POST", "/score", {"rows": golden}))


def _recommend_cases(golden: dict) -> list[tuple]:
    user, items = user_and_items(golden)
    base = {"user": user, "items": items, "k": 3}

    def changed(**parts):
        return {**copy.deepcopy(base), **parts}

    with_sku = {**items, "sku": [f"sku-{row}" for row in range(8)]}
    return [
        ("k 0", changed(k=0), 422, "k: Input should be greater than or equal to 1"),
        ("k -1", changed(k=-1), 422, "k: Input should be greater than or equal to 1"),
        ("k 10**40", changed(k=10 ** 40), 200, None),
        ("k string", changed(k="3"), 422, "k: Input should be a valid integer"),
        ("k float", changed(k=2.5), 422, "k: Input should be a valid integer"),
        ("k 3.0", changed(k=3.0), 422, "k: Input should be a valid integer"),
        ("k bool", changed(k=True), 422, "k: Input should be a valid integer"),
        ("k null", changed(k=None), 422, "k: Input should be a valid integer"),
        ("k list", changed(k=[3]), 422, "k: Input should be a valid integer"),
        ("k Infinity", _raw(changed(k="TOKEN"), "Infinity"), 422, "k: Input should be a valid integer"),
        ("user missing", {"items": items}, 422, "user: Field required"),
        ("user list", changed(user=[user]), 422, "user: Input should be a valid dictionary"),
        ("user null", changed(user=None), 422, "user: Input should be a valid dictionary"),
        ("user age 1e308", changed(user={**user, "user_age": 1e308}), 422,
         "user.user_age: row 0: 1e+308 is not a finite float32 number"),
        ("user id Infinity", _raw(changed(user={**user, "user_id": "TOKEN"}), "Infinity"), 422,
         "user.user_id: row 0: inf is not an id"),
        ("user id list", changed(user={**user, "user_id": ["u1", "u2"]}), 422, "user.user_id: row 0: expected one id"),
        ("user interests 10**6", changed(user={**user, "user_interests": ["i1+"] * BIG}), 422,
         "user.user_interests: row 0: expected a separated string or a list of at most 1024"),
        ("user unknown field", changed(user={**user, "colour": "red"}), 422, "unknown field(s) user.colour"),
        ("items list", changed(items=[items]), 422, "items: Input should be a valid dictionary"),
        ("items column a number", changed(items={**items, "item_price": 5}), 422,
         "items.item_price: Input should be a valid list"),
        ("items 10**4 bad columns", changed(items={f"f{i}": 1 for i in range(10_000)}), 422, " and 9997 more"),
        ("items lengths differ", changed(items={**items, "item_price": [1.0]}), 422,
         "items: the lists differ in length"),
        ("items empty", changed(items={}), 422, "items: no 'item_id' list"),
        ("items without rows", changed(items={field: [] for field in items}), 422, "items: no rows"),
        ("items price NaN token", _raw(changed(items={**items, "item_price": ["TOKEN"] * 8}), "-1e400"), 422,
         "items.item_price: row 0: -inf is not a finite number"),
        ("items vector 1e39", changed(items={**items, "item_embedding": [[1e39] * 8] * 8}), 422,
         "items.item_embedding: row 0: element 0: 1e+39 is not a finite float32 number"),
        ("user and items overlap", changed(items={**items, "hour": [3] * 8}), 422, "user and items both hold hour"),
        ("item_key number", changed(item_key=5), 422, "item_key: Input should be a valid string"),
        ("item_key null", changed(item_key=None), 422, "item_key: Input should be a valid string"),
        ("item_key empty", changed(item_key=""), 422, "items: no '' list"),
        ("item_key 10**5 characters", changed(item_key="k" * 100_000), 422,
         "item_key: String should have at most 4096"),
        ("keys objects", changed(items={**with_sku, "sku": [{"id": 1}] * 8}, item_key="sku"), 422,
         "items.sku: row 0: expected a string or a number naming the candidate, got {'id': 1}"),
        ("keys NaN", _raw(changed(items={**with_sku, "sku": ["TOKEN"] * 8}, item_key="sku"), "NaN"), 422,
         "items.sku: row 0: expected a string or a number naming the candidate, got nan"),
        ("keys lone surrogate", _raw(changed(items={**with_sku, "sku": ["TOKEN"] * 8}, item_key="sku"), '"\\udcff"'),
         422, "items.sku: row 0: '\\udcff' is not valid Unicode"),
        ("keys huge ints", changed(items={**with_sku, "sku": [10 ** 40 + row for row in range(8)]}, item_key="sku"),
         200, None),
        ("keys unicode", changed(items={**with_sku, "sku": [f"商品-{row}-🙂" for row in range(8)]}, item_key="sku"),
         200, None),
        ("extra key", changed(limit=3), 422, "limit: Extra inputs are not permitted"),
        ("not JSON", "{", 422, "body: not JSON"),
        ("empty body", "", 422, "body: Field required"),
    ]


def test_a_hostile_recommend_request_is_refused_naming_the_field(service, golden):
    user, items = user_and_items(golden)
    valid = ("POST", "/recommend", {"user": user, "items": items, "k": 2})
    for name, body, status, detail in _recommend_cases(golden):
        response = service.send("POST", "/recommend", body)
        try:
            assert_answered_and_still_serving(service, response, status, detail, valid)
        except AssertionError as error:
            raise AssertionError(f"{name}: {error}") from None
    # Keys come back as they were sent, the unicode ones too.
    keys = [f"商品-{row}-🙂" for row in range(8)]
    answer = service.send("POST", "/recommend",
                          {"user": user, "items": {**items, "sku": keys}, "item_key": "sku", "k": 8})
    assert sorted(entry["sku"] for entry in answer.json()["items"]) == sorted(keys)


@pytest.mark.parametrize("method, path, body, status", [
    ("GET", "/healthz", None, 200), ("GET", "/healthz?verbose=1e400&x=%00", None, 200),
    ("GET", "/healthz", "{not json", 200), ("GET", "/metadata", None, 200),
    ("POST", "/healthz", {}, 405), ("PUT", "/metadata", {}, 405), ("DELETE", "/score", None, 405),
    ("GET", "/score", None, 405), ("GET", "/recommend", None, 405), ("PATCH", "/recommend", {}, 405),
    ("HEAD", "/healthz", None, 405), ("OPTIONS", "/score", None, 405),
    ("GET", "/nope", None, 404), ("POST", "/nope", {}, 404), ("GET", "/%ff%fe", None, 404),
    ("GET", "/score/../healthz", None, 200), ("GET", "/" + "a" * 8000, None, 404), ("POST", "/score/", {}, 307),
], ids=lambda part: str(part)[:30])
def test_every_endpoint_and_unknown_paths_and_methods(service, golden, method, path, body, status):
    response = service.send(method, path, body)
    assert_answered_and_still_serving(service, response, status, None, ("GET", "/healthz"))
    if (method, path) == ("GET", "/metadata"):
        assert response.json()["format"] == "fusionrec-bundle"


def test_the_score_of_an_overflowing_row_is_refused(service, golden):
    """Inputs within float32 can still overflow inside the model; JSON has no inf to answer with."""
    response = service.send("POST", "/score", _rows(golden, "item_embedding", [3e38] * 8, row=5))
    assert_answered_and_still_serving(service, response, 422, "rows: task ", ("POST", "/score", {"rows": golden}))
    assert "row(s) 5: the score is not finite" in response.json()["detail"]


def test_an_unforeseen_error_is_a_500_without_traceback_on_the_same_connection(bundle_dir, golden):
    failing = copy.copy(load_onnx(bundle_dir))

    def run(inputs):
        raise RuntimeError("the model failed")

    failing.run = run
    service = Service(create_app(failing))
    try:
        first = service.send("POST", "/score", {"rows": golden})
        assert first.status_code == 500
        assert first.json() == {"detail": "internal error (RuntimeError); the service logged it"}
        assert "the model failed" in "".join(
            logging.Formatter().format(record) for record in service.errors)  # the traceback stays with the service
        service.errors.clear()
        health = service.send("GET", "/healthz")
        assert health.status_code == 200 and connection(health) == connection(first)
    finally:
        service.close()


def test_a_manifest_json_cannot_carry_is_refused_at_start_not_at_each_metadata_request(bundle_dir):
    bundle = load_onnx(bundle_dir)
    bundle.manifest = copy.deepcopy(bundle.manifest)
    bundle.manifest["preprocessing"]["item_price"]["std"] = float("inf")
    with pytest.raises(ConfigError, match=r"manifest\.json: holds an inf or NaN, which JSON cannot carry"):
        create_app(bundle)


# ---------------------------------------------------------------------------------------------------------------------
# A bundle with image and audio fields, served with --content-root: hostile paths and item vectors
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def media_bundle_dir(tmp_path_factory):
    """The quickstart's image and audio fields (tiny encoders) on a small log; torch programs only."""
    root = tmp_path_factory.mktemp("serve-media")
    quickstart = yaml.safe_load(QUICKSTART.read_text())
    config = small_config({"name": "shared_bottom", "hidden": [16]},
                          trainer={"max_epochs": 1, "limit_train_batches": 2, "limit_val_batches": 1,
                                   "enable_checkpointing": True})
    config["data"]["generate"] = {"rows": 1000, "users": 50, "items": 30, "seed": 0, "media": True}
    for field in ("item_image", "item_audio"):
        config["data"]["features"][field] = quickstart["data"]["features"][field]
    config["model"]["encoders"] = {field: quickstart["model"]["encoders"][field]
                                   for field in ("item_image", "item_audio")}
    path = write_config(root, config)
    assert main(["fit", "--config", str(path), "--trainer.default_root_dir", str(root),
                 "--test_after_fit", "false"]) == 0
    (checkpoint,) = root.glob("**/epoch=*.ckpt")
    assert main(["export", "--ckpt", str(checkpoint), "--out", str(root / "bundle"), "--no-onnx"]) == 0
    return root / "bundle"


@pytest.fixture(scope="module")
def media_service(media_bundle_dir, tmp_path_factory):
    """Served with a content root that holds an image, a directory, links in and out, a FIFO and a broken file."""
    content = tmp_path_factory.mktemp("content-root")
    shutil.copy(media_bundle_dir / "golden" / "item_image-0.png", content / "image.png")
    shutil.copy(media_bundle_dir / "golden" / "item_audio-0.wav", content / "sound.wav")
    (content / "folder.png").mkdir()
    (content / "inside.png").symlink_to(content / "image.png")
    (content / "outside.png").symlink_to(media_bundle_dir / "golden" / "item_image-1.png")
    (content / "loop.png").symlink_to(content / "loop.png")
    (content / "broken.png").write_bytes(b"\x89PNG not really")
    os.mkfifo(content / "fifo.wav")
    service = Service(create_app(load(media_bundle_dir), max_batch_rows=MAX_BATCH_ROWS, content_root=content))
    yield service
    service.close()


def _media_rows(bundle_dir, image, audio="sound.wav") -> dict:
    inputs = json.loads((bundle_dir / "golden.json").read_text())["inputs"]
    rows = {field: values[:2] for field, values in inputs.items()}
    rows["item_image"], rows["item_audio"] = ["image.png", image], ["sound.wav", audio]
    return {"rows": rows}


MEDIA = [
    ("a file under the root", "image.png", 200, None),
    ("a link inside the root", "inside.png", 200, None),
    ("blank is no content", "   ", 200, None),
    ("a NUL byte", "image.png\u0000.txt", 422, "rows.item_image: row 1: a path with a NUL character"),
    ("a path of 5000 characters", "a/" * 2500, 422,
     "rows.item_image: row 1: a string of 5000 characters, more than 4096"),
    ("a name too long", "n" * 300 + ".png", 422, "rows.item_image: row 1: 'nnnn"),
    ("a directory", "folder.png", 422, "rows.item_image: row 1: 'folder.png': a directory, not a file"),
    ("a link out of the root", "outside.png", 422, "is outside --content-root"),
    ("a link to itself", "loop.png", 422, "rows.item_image: row 1: 'loop.png': "),
    ("dot dot", "../../../../etc/passwd", 422, "is outside --content-root"),
    ("the root itself", ".", 422, "a directory, not a file"),
    ("an absolute path", "/etc/passwd", 422, "is outside --content-root"),
    ("a lone surrogate", "=\"\\udcff.png\"", 422, "rows.item_image: row 1: '\\udcff.png' is not valid Unicode"),
    ("unicode", "图片🙂.png", 422, "file not found"),
    ("a broken image", "broken.png", 422, "cannot decode image"),
    ("a missing file", "missing.png", 422, "file not found"),
    ("a number", 5, 422, "rows.item_image: row 1: expected content (a string), an item vector"),
    ("an object", {"path": "image.png"}, 422, "rows.item_image: row 1: expected content"),
    ("a vector with NaN", "=[" + ", ".join(["0"] * 7 + ["NaN"]) + "]", 422,
     "rows.item_image: row 1: element 7: nan is not a finite float32 number"),
    ("a vector with 1e400", "=[" + ", ".join(["1e400"] + ["0"] * 7) + "]", 422,
     "element 0: inf is not a finite float32"),
    ("a vector with 1e39", [1e39] + [0.0] * 7, 422, "element 0: 1e+39 is not a finite float32 number"),
    ("a vector of strings", ["0"] * 8, 422, "rows.item_image: row 1: expected a list of 8 numbers"),
    ("a short vector", [0.5], 422, "rows.item_image: row 1: expected content (a string), an item vector of 8 numbers"),
    ("a 10**6 vector", [0.0] * BIG, 422, "rows.item_image: row 1: expected content"),
    ("a vector", [0.1] * 8, 200, None),
]


@pytest.mark.parametrize("image, status, detail", [case[1:] for case in MEDIA], ids=[case[0] for case in MEDIA])
def test_hostile_paths_and_item_vectors_under_the_content_root(media_service, media_bundle_dir, image, status, detail):
    if isinstance(image, str) and image.startswith("="):
        body = _raw(_media_rows(media_bundle_dir, "TOKEN"), image[1:])
    else:
        body = _media_rows(media_bundle_dir, image)
    response = media_service.send("POST", "/score", body)
    assert_answered_and_still_serving(media_service, response, status, detail,
                                      ("POST", "/score", _media_rows(media_bundle_dir, "inside.png")))


def test_a_fifo_is_not_read(media_service, media_bundle_dir):
    response = media_service.send("POST", "/score", _media_rows(media_bundle_dir, None, audio="fifo.wav"))
    assert_answered_and_still_serving(media_service, response, 422,
                                      "rows.item_audio: row 1: 'fifo.wav': not a regular file",
                                      ("POST", "/score", _media_rows(media_bundle_dir, None)))
