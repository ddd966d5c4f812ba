"""fusionrec serve: the HTTP scoring service over an exported bundle (endpoints, request checks,
micro-batching, the command and its torch-free ONNX variant)."""

from __future__ import annotations

import asyncio
import copy
import json
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import torch
from conftest import small_config, write_config
from fastapi.testclient import TestClient

from fusionrec.cli import main
from fusionrec.errors import ConfigError
from fusionrec.serving import load, load_onnx
from fusionrec.serving.batching import MicroBatcher
from fusionrec.serving.fused_score import FusedScore
from fusionrec.serving.server import create_app

CLICK_AND_LIKE = "{click: 1, like: 0.5}"


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    config = small_config({"name": "shared_bottom", "hidden": [16]},
                          trainer={"max_epochs": 1, "enable_checkpointing": True})
    config["data"]["generate"] = {"rows": 3000, "users": 100, "items": 80, "seed": 0}
    path = write_config(root, config)
    assert main(["fit", "--config", str(path), "--trainer.default_root_dir", str(root), "--test_after_fit", "false"]) == 0
    (checkpoint,) = root.glob("**/epoch=*.ckpt")
    assert main(["export", "--ckpt", str(checkpoint), "--out", str(root / "bundle")]) == 0
    return root / "bundle"


@pytest.fixture(scope="module")
def bundle(bundle_dir):
    return load_onnx(bundle_dir)


@pytest.fixture(scope="module")
def golden(bundle_dir):
    return json.loads((bundle_dir / "golden.json").read_text())["inputs"]  # 8 rows, the last id unknown


@pytest.fixture
def client(bundle):
    with TestClient(create_app(bundle, max_batch_rows=64, fused_score=FusedScore.parse(
            CLICK_AND_LIKE, "product", bundle.tasks))) as client:
        yield client


def user_and_items(golden: dict) -> tuple[dict, dict]:
    """The first golden row's user and context fields, and every golden row's item fields."""
    user = {field: values[0] for field, values in golden.items() if not field.startswith("item_")}
    return user, {field: values for field, values in golden.items() if field.startswith("item_")}


def test_score_answers_what_the_bundle_scores_for_columns_and_row_objects(client, bundle, golden):
    expected = bundle.score(golden)
    columnar = client.post("/score", json={"rows": golden})
    assert columnar.status_code == 200, columnar.text
    objects = client.post("/score", json={"rows": [{field: values[row] for field, values in golden.items()}
                                                   for row in range(8)]})
    for response in (columnar, objects):
        assert sorted(response.json()["scores"]) == ["click", "like", "watch_time"]
        for task, scores in response.json()["scores"].items():
            np.testing.assert_allclose(scores, expected[task], rtol=1e-6)


def test_unknown_ids_take_the_out_of_vocabulary_path(client, golden):
    rows = {field: values[:2] for field, values in golden.items()}
    rows["user_id"] = ["never-seen", "also-never-seen"]
    rows["item_tags"] = ["t-unknown", ["t-unknown-too"]]
    response = client.post("/score", json={"rows": rows})
    assert response.status_code == 200, response.text
    # Missing ids share the out-of-vocabulary id with unknown ones; so do all unknown tags.
    rows["user_id"], rows["item_tags"] = [None, None], ["other-unknown", ["t-unknown"]]
    assert client.post("/score", json={"rows": rows}).json() == response.json()


def _with(golden: dict, **changes) -> dict:
    rows = copy.deepcopy(golden)
    for field, value in changes.items():
        if value is None:
            del rows[field]
        else:
            rows[field] = value
    return rows


BAD_ROWS = {
    "missing field": ({"user_id": None}, "missing field(s): user_id"),
    "unknown field": ({"colour": ["red"] * 8}, "unknown field(s) rows.colour"),
    "string for a number": ({"item_price": ["cheap"] * 8}, "rows.item_price: row 0: expected a number, got 'cheap'"),
    "list for a scalar": ({"user_id": [["u1"]] * 8}, "rows.user_id: row 0: expected one id (a string or a number)"),
    "object for tags": ({"item_tags": [{"t": 1}] * 8}, "rows.item_tags: row 0: expected a separated string or a list"),
    "strings in a vector": ({"item_embedding": [["a"] * 8] * 8}, "rows.item_embedding: row 0: expected a list of 8 numbers"),
    "short vector": ({"item_embedding": [[0.5]] * 8}, "rows.item_embedding: row 0: expected a list of 8 numbers, got [0.5]"),
    "too large for float32": ({"item_price": [1.0] * 7 + [1e300]},
                              "rows.item_price: row 7: 1e+300 is not a finite float32 number once standardised"),
    "vector element beyond float32": ({"item_embedding": [[0.0] * 8] * 2 + [[0.0] * 7 + [1e39]] + [[0.0] * 8] * 5},
                                      "rows.item_embedding: row 2: element 7: 1e+39 is not a finite float32 number"),
    "lengths differ": ({"hour": [1, 2]}, "fields differ in length"),
    "a scalar for a column": ({"hour": 3}, "rows.hour: expected a list with one value per row"),
}


@pytest.mark.parametrize("changes, message", BAD_ROWS.values(), ids=BAD_ROWS)
def test_a_bad_request_is_422_naming_the_field(client, golden, changes, message):
    response = client.post("/score", json={"rows": _with(golden, **changes)})
    assert response.status_code == 422
    assert message in response.json()["detail"]


def test_bad_envelopes_and_oversized_batches(client, golden):
    assert "rows: Field required" in client.post("/score", json={"row": golden}).json()["detail"]
    assert client.post("/score", json={"rows": "user_id=7"}).status_code == 422
    assert client.post("/score", json={"rows": [{**{f: v[0] for f, v in golden.items()}}, {}]}).json()["detail"] \
        .startswith("rows[1]: missing field(s): user_id")
    oversized = client.post("/score", json={"rows": {field: values * 10 for field, values in golden.items()}})
    assert oversized.status_code == 413 and "80 rows, more than this service's --max-batch-rows 64" in oversized.text


def test_recommend_returns_the_top_k_by_the_fused_score(client, golden):
    user, items = user_and_items(golden)
    scores = client.post("/score", json={"rows": {**{f: [v] * 8 for f, v in user.items()}, **items}}).json()["scores"]
    fused = np.array(scores["click"]) * np.array(scores["like"]) ** 0.5
    response = client.post("/recommend", json={"user": user, "items": items, "k": 3})
    assert response.status_code == 200, response.text
    top = response.json()["items"]
    assert [entry["item_id"] for entry in top] == [items["item_id"][row] for row in np.argsort(-fused)[:3]]
    np.testing.assert_allclose([entry["score"] for entry in top], np.sort(fused)[::-1][:3], rtol=1e-6)
    assert sorted(top[0]["scores"]) == ["click", "like", "watch_time"]
    # A key that is no model field names the candidates too; k beyond the candidates returns them all.
    with_sku = {**items, "sku": [f"sku-{row}" for row in range(8)]}
    everything = client.post("/recommend", json={"user": user, "items": with_sku, "k": 50, "item_key": "sku"}).json()
    assert [entry["sku"] for entry in everything["items"]] == [f"sku-{row}" for row in np.argsort(-fused, kind="stable")]


def test_recommend_rejects_what_it_cannot_rank(client, bundle, golden):
    user, items = user_and_items(golden)
    both = client.post("/recommend", json={"user": user, "items": {**items, "hour": [3] * 8}})
    assert both.status_code == 422 and "both hold hour" in both.text
    no_key = client.post("/recommend", json={"user": user, "items": items, "item_key": "sku"})
    assert no_key.status_code == 422 and "no 'sku' list" in no_key.text
    wrong_user = client.post("/recommend", json={"user": {**user, "user_age": "old"}, "items": items})
    assert wrong_user.status_code == 422 and "user.user_age: row 0: expected a number, got 'old'" in wrong_user.text
    with TestClient(create_app(bundle)) as unconfigured:  # neither --score nor a fused score in the manifest
        response = unconfigured.post("/recommend", json={"user": user, "items": items})
        assert response.status_code == 400 and "start the service with --score" in response.text


def test_the_manifest_fused_score_is_used_and_shown(bundle_dir, golden):
    bundle = load_onnx(bundle_dir)
    bundle.manifest["fused_score"] = {"terms": {"watch_time": {"weight": 1.0, "offset": 0.0}}, "combine": "sum"}
    user, items = user_and_items(golden)
    with TestClient(create_app(bundle)) as client:
        top = client.post("/recommend", json={"user": user, "items": items, "k": 8}).json()["items"]
        assert [entry["score"] for entry in top] == [entry["scores"]["watch_time"] for entry in top]
        assert [entry["score"] for entry in top] == sorted((entry["score"] for entry in top), reverse=True)
        metadata = client.get("/metadata").json()
        assert metadata["fused_score"]["combine"] == "sum" and metadata["outputs"] == bundle.manifest["outputs"]
        assert client.get("/healthz").json()["status"] == "ok"
    bundle.manifest["fused_score"]["terms"] = {"shares": {"weight": 1.0}}
    with pytest.raises(ConfigError, match="manifest.json fused_score.terms.shares: the checkpoint has no task"):
        create_app(bundle)


def test_concurrent_requests_share_one_model_run_and_a_bad_one_fails_alone(bundle, golden):
    runs = []

    def counting_run(inputs):
        runs.append(len(inputs["user_id"]))
        return bundle.run(inputs)

    requests = [{field: values[row:row + 1] * (row + 1) for field, values in golden.items()} for row in range(8)]
    bad = _with(golden, item_price=["cheap"] * 8)
    batching = copy.copy(bundle)
    batching.run = counting_run
    # The batch closes when all 36 rows are in; the long wait only matters if merging is broken.
    with TestClient(create_app(batching, max_batch_rows=36, max_wait_ms=20_000)) as client:
        with ThreadPoolExecutor(9) as pool:
            responses = list(pool.map(lambda rows: client.post("/score", json={"rows": rows}), [bad, *requests]))
        health = client.get("/healthz").json()
    assert responses[0].status_code == 422
    assert runs == [36] and health == {"status": "ok", "requests": 8, "model_runs": 1, "rows": 36}
    for rows, response in zip(requests, responses[1:]):
        for task, expected in bundle.score(rows).items():
            np.testing.assert_allclose(response.json()["scores"][task], expected, rtol=1e-6)


def test_the_batcher_carries_an_overflowing_request_and_survives_a_failed_run():
    runs = []

    def run(inputs):
        runs.append(inputs["x"].tolist())
        if -1 in inputs["x"]:
            raise RuntimeError("model failed")
        return {"double": inputs["x"] * 2}

    async def scenario():
        batcher = MicroBatcher(run, max_batch_rows=10, max_wait_ms=50)
        await batcher.start()
        # A lost request would hang: bound the wait.
        answers = await asyncio.wait_for(asyncio.gather(*(batcher.submit({"x": np.full(4, i)}, 4) for i in range(3))), 10)
        failed = await asyncio.gather(batcher.submit({"x": np.array([-1])}, 1), return_exceptions=True)
        after = await batcher.submit({"x": np.array([5])}, 1)
        await batcher.stop()
        return answers, failed, after

    answers, failed, after = asyncio.run(scenario())
    assert runs[:2] == [[0] * 4 + [1] * 4, [2] * 4]  # 4 + 4 rows fit in 10; the third request waits its turn
    assert [answer["double"].tolist() for answer in answers] == [[0] * 4, [2] * 4, [4] * 4]
    assert isinstance(failed[0], RuntimeError) and after["double"].tolist() == [10]


def test_the_fused_score_works_on_numpy_arrays_as_on_tensors():
    scores = {"click": [0.9, 0.5], "like": [0.1, 0.8], "watch_time": [3.0, -2.0]}
    for combine in ("product", "sum"):
        fused = FusedScore.parse("{click: 1, like: 0.5, watch_time: {weight: 0.2, offset: 1}}", combine, list(scores))
        as_numpy = fused({task: np.array(values, dtype=np.float32) for task, values in scores.items()})
        as_torch = fused({task: torch.tensor(values) for task, values in scores.items()})
        assert isinstance(as_numpy, np.ndarray)
        np.testing.assert_allclose(as_numpy, as_torch.numpy(), rtol=1e-6)


def test_the_command_refuses_a_bad_bundle_with_one_message(bundle_dir, tmp_path, capsys, monkeypatch):
    def error_of(*argv):
        assert main(["serve", *map(str, argv)]) == 2
        return capsys.readouterr().err.strip()

    assert "no manifest.json there; write a bundle with fusionrec export" in error_of(tmp_path)
    changed = tmp_path / "changed"
    shutil.copytree(bundle_dir, changed)
    (changed / "model.onnx").write_bytes((changed / "model.onnx").read_bytes() + b"\0")
    assert "model.onnx: changed since export" in error_of(changed, "--runtime", "onnx")
    (changed / "model.onnx").unlink()
    assert "no model.onnx, which --runtime onnx runs" in error_of(changed, "--runtime", "onnx")
    assert "the checkpoint has no task 'shares'" in error_of(bundle_dir, "--runtime", "onnx", "--score", "{shares: 1}")
    assert "--combine applies to --score" in error_of(bundle_dir, "--combine", "sum")
    assert "invalid choice: 'tflite'" in error_of(bundle_dir, "--runtime", "tflite")
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    assert "pip install 'fusionrec[serve]'" in error_of(bundle_dir)


def test_the_cli_imports_the_web_stack_only_to_serve():
    script = "import sys, fusionrec.cli; print(sorted({'fastapi', 'uvicorn', 'starlette'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _serve(command: list[str], tmp_path) -> tuple[subprocess.Popen, str]:
    """Start a service and wait until /healthz answers; the caller stops it."""
    port = _free_port()
    log = open(tmp_path / f"serve-{port}.log", "w")
    process = subprocess.Popen([*command, "--port", str(port), "--log-level", "warning"], stdout=log,
                               stderr=subprocess.STDOUT, cwd=tmp_path)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 90
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"{url}/healthz").status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise AssertionError(f"the service did not start: {(tmp_path / f'serve-{port}.log').read_text()[-3000:]}")


def test_fusionrec_serve_answers_over_http(bundle_dir, golden, tmp_path):
    process, url = _serve([sys.executable, "-m", "fusionrec.cli", "serve", str(bundle_dir), "--score", CLICK_AND_LIKE],
                          tmp_path)
    try:
        scores = httpx.post(f"{url}/score", json={"rows": golden}).json()["scores"]
        for task, expected in load(bundle_dir).score(golden).items():
            np.testing.assert_allclose(scores[task], expected, rtol=1e-6)
        user, items = user_and_items(golden)
        assert len(httpx.post(f"{url}/recommend", json={"user": user, "items": items, "k": 2}).json()["items"]) == 2
        assert httpx.get(f"{url}/metadata").json()["format"] == "fusionrec-bundle"
    finally:
        process.terminate()
        process.wait(timeout=30)


TRAINING_STACK = ("torch", "lightning", "pytorch_lightning", "pluggy", "pandas", "torchmetrics")


def test_the_onnx_service_runs_without_the_training_stack(bundle_dir, golden, tmp_path):
    blocked = "; ".join(f"sys.modules[{name!r}] = None" for name in TRAINING_STACK)
    launcher = f"import runpy, sys; {blocked}; runpy.run_module('fusionrec.serving', run_name='__main__')"
    process, url = _serve([sys.executable, "-c", launcher, str(bundle_dir), "--runtime", "onnx"], tmp_path)
    try:
        scores = httpx.post(f"{url}/score", json={"rows": golden}).json()["scores"]
        expected = json.loads((bundle_dir / "golden.json").read_text())["outputs"]
        for task in expected:
            np.testing.assert_allclose(scores[task], expected[task], atol=1e-5)
    finally:
        process.terminate()
        process.wait(timeout=30)
