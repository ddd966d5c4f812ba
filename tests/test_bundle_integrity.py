"""A bundle is verified as a whole before either loader or `fusionrec serve` uses it: SHA256SUMS covers
every file, manifest.json included; its entries stay inside the bundle; a manifest that disagrees with
the graphs it describes is refused; ``verify=False`` skips the checksums for a trusted copy."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from conftest import save_tiny_bert, small_config, write_config

from fusionrec.cli import main
from fusionrec.data.synthetic_media import FILLER_WORDS, TITLE_WORDS
from fusionrec.errors import ConfigError
from fusionrec.serving import BundleError, load, load_onnx
from fusionrec.serving.bundle import CHECKSUMS, write_checksums
from fusionrec.serving.command import open_bundle

TOKENIZER = "assets/item_title/tokenizer.json"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One small bundle with both runtimes and a text field (so a tokenizer asset and item encoders)."""
    root = tmp_path_factory.mktemp("integrity")
    words = sorted({w for levels in TITLE_WORDS.values() for pair in levels for w in pair} | set(FILLER_WORDS))
    bert = save_tiny_bert(root / "bert", words)
    config = small_config({"name": "shared_bottom", "hidden": [16]},
                          trainer={"max_epochs": 1, "enable_checkpointing": True, "limit_train_batches": 3})
    config["data"]["generate"] = {"rows": 2000, "users": 60, "items": 40, "seed": 0, "media": True}
    config["data"]["features"]["item_title"] = {"type": "text"}
    config["model"]["encoders"] = {"item_title": {"name": "text", "model": str(bert), "max_length": 8,
                                                  "mode": "frozen"}}
    path = write_config(root, config)
    assert main(["fit", "--config", str(path), "--trainer.default_root_dir", str(root), "--test_after_fit", "false"]) == 0
    (checkpoint,) = root.glob("**/epoch=*.ckpt")
    assert main(["export", "--ckpt", str(checkpoint), "--out", str(root / "bundle"), "--skip-test-metrics"]) == 0
    return root / "bundle"


@pytest.fixture
def bundle(exported, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(exported, copy, symlinks=True)
    return copy


def flip_byte(path, at: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    at = len(data) // 2 if at is None else at
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def edit_manifest(bundle, change) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    change(manifest)
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=1))


def edit_checksums(bundle, change) -> None:
    lines = (bundle / CHECKSUMS).read_text().splitlines()
    (bundle / CHECKSUMS).write_text("".join(line + "\n" for line in change(lines)))


def refused(bundle, message: str) -> None:
    """Both loaders and the command refuse ``bundle`` with one error matching ``message``."""
    for loader in (load, load_onnx):
        with pytest.raises(BundleError, match=message):
            loader(bundle)
    for runtime in ("pt2", "onnx"):
        with pytest.raises(ConfigError, match=message):
            open_bundle(bundle, runtime)


def _swap_first_two(entries: list) -> None:
    entries[0], entries[1] = entries[1], entries[0]


@pytest.mark.parametrize("file", ["weights.safetensors", "model.pt2", "model.onnx", "golden.json", TOKENIZER,
                                  "item_encoder.item_title.pt2", "item_encoder.item_title.onnx"])
def test_a_changed_file_is_refused(bundle, file):
    flip_byte(bundle / file)
    refused(bundle, rf"{file}: changed since export \(its sha256 differs from the one SHA256SUMS records\)")


@pytest.mark.parametrize("change", ["flipped byte", "swapped entries"])
def test_a_changed_vocabulary_in_the_manifest_is_refused(bundle, change):
    manifest_text = (bundle / "manifest.json").read_text()
    vocabulary = json.loads(manifest_text)["preprocessing"]["user_id"]["vocabulary"]
    if change == "flipped byte":  # one user id becomes another, the rest of the file as exported
        entry = json.dumps(vocabulary[5])
        flip_byte(bundle / "manifest.json", manifest_text.encode().index(entry.encode()) + 1)
    else:
        edit_manifest(bundle, lambda manifest: _swap_first_two(manifest["preprocessing"]["user_id"]["vocabulary"]))
    assert (bundle / "manifest.json").read_text() != manifest_text
    refused(bundle, r"manifest\.json: changed since export")


@pytest.mark.parametrize("change, message", [
    ("removed", r"SHA256SUMS: missing, so the bundle cannot be verified"),
    ("emptied", r"assets/item_title/tokenizer\.json: not listed in SHA256SUMS"),
    ("partial", r"golden\.json: not listed in SHA256SUMS"),
    ("up", r"SHA256SUMS: line 9: '\.\./outside\.json' is a path out of the bundle"),
    ("absolute", r"SHA256SUMS: line 9: '/.*/outside\.json' is an absolute path"),
    ("malformed", r"SHA256SUMS: line 1: expected '<sha256>  <file>'"),
])
def test_a_missing_partial_or_escaping_list_of_checksums_is_refused(bundle, tmp_path, change, message):
    outside = tmp_path / "outside.json"
    outside.write_text("{}")
    entry = f"{'0' * 64}  "
    if change == "removed":
        (bundle / CHECKSUMS).unlink()
    elif change == "emptied":
        (bundle / CHECKSUMS).write_text("")
    elif change == "partial":
        edit_checksums(bundle, lambda lines: [line for line in lines if not line.endswith("  golden.json")])
    elif change == "up":
        edit_checksums(bundle, lambda lines: [*lines, entry + "../outside.json"])
    elif change == "absolute":
        edit_checksums(bundle, lambda lines: [*lines, entry + str(outside)])
    else:
        edit_checksums(bundle, lambda lines: [line.replace("  ", " ", 1) for line in lines])
    refused(bundle, message)


def test_an_unlisted_file_and_a_link_out_of_the_bundle_are_refused(bundle, tmp_path):
    (bundle / "assets" / "item_title" / "vocab.txt").write_text("extra")
    refused(bundle, r"assets/item_title/vocab\.txt: not listed in SHA256SUMS")
    (bundle / "assets" / "item_title" / "vocab.txt").unlink()
    # The same bytes, but read from outside the bundle.
    shutil.move(bundle / "golden.json", tmp_path / "golden.json")
    os.symlink(tmp_path / "golden.json", bundle / "golden.json")
    refused(bundle, r"golden\.json: leads out of the bundle")
    shutil.move(tmp_path / "golden.json", bundle / "golden.json")
    # A listed link to itself cannot be resolved: one error, not a traceback.
    os.symlink("loop", bundle / "loop")
    edit_checksums(bundle, lambda lines: [*lines, f"{'0' * 64}  loop"])
    refused(bundle, r"loop: cannot be read")


def test_a_re_hashed_manifest_may_not_name_files_outside_the_list(bundle, tmp_path):
    shutil.copy(bundle / "item_encoder.item_title.pt2", tmp_path / "encoder.pt2")
    edit_manifest(bundle, lambda manifest: manifest["content"]["fields"]["item_title"].update(
        program="../encoder.pt2", onnx="../encoder.pt2"))
    write_checksums(bundle)
    refused(bundle, r"manifest\.json: names the file '\.\./encoder\.pt2', which SHA256SUMS does not list")


def _rename_field(manifest: dict, old: str, new: str) -> None:
    """The signature and the preprocessing agree on the new name; the graphs still take the old one."""
    for entry in manifest["inputs"]:
        if entry["name"] == old:
            entry["name"] = entry["field"] = new
    manifest["preprocessing"] = {new if name == old else name: entry
                                 for name, entry in manifest["preprocessing"].items()}


@pytest.mark.parametrize("change, message", [
    (lambda manifest: _rename_field(manifest, "hour", "hour_of_day"),
     r"\"inputs\" declares input 'hour_of_day', which model\.(pt2|onnx) does not take"),
    (lambda manifest: manifest["inputs"].pop(),
     r"preprocessing makes input 'item_title\.present', which \"inputs\" does not declare"),
    (lambda manifest: manifest["content"]["fields"]["item_title"]["inputs"].pop(0),
     r"item_encoder\.item_title\.(pt2|onnx) takes input 'input_ids', which \"content\.fields\.item_title\.inputs\""),
    (lambda manifest: manifest["outputs"].update(shares=manifest["outputs"]["click"]),
     r"\"outputs\" declares task 'shares', which model\.(pt2|onnx) does not give"),
    (lambda manifest: manifest.update(format_version=2),
     r"manifest\.json: format_version 2; this fusionrec reads bundles of format_version 3"),
], ids=["renamed field", "missing input", "item encoder input", "extra task", "older format"])
def test_a_manifest_that_disagrees_with_the_graphs_is_one_error_line(bundle, change, message, capsys):
    edit_manifest(bundle, change)
    write_checksums(bundle)  # consistent checksums: only the loader's own check can tell
    refused(bundle, message)
    assert main(["serve", str(bundle), "--runtime", "onnx"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("fusionrec: error: ") and len(error.strip().splitlines()) == 1, error


def test_verify_false_skips_the_checksums_of_a_trusted_copy(bundle):
    flip_byte(bundle / "weights.safetensors")  # read by neither runtime
    (bundle / CHECKSUMS).unlink()
    for loader in (load, load_onnx):
        with pytest.raises(BundleError, match="SHA256SUMS: missing"):
            loader(bundle)
        loader(bundle, verify=False).check()
    # Unverified, the files the manifest names must still lie inside the bundle.
    edit_manifest(bundle, lambda manifest: manifest["content"]["fields"]["item_title"].update(
        program="../encoder.pt2", onnx="../encoder.pt2"))
    for loader in (load, load_onnx):
        with pytest.raises(BundleError, match=r"names the file '\.\./encoder\.pt2', a path out of the bundle"):
            loader(bundle, verify=False)


def test_a_runtime_needs_only_the_files_it_reads(bundle):
    for name in ("model.onnx", "item_encoder.item_title.onnx", "weights.safetensors"):
        (bundle / name).unlink()
    open_bundle(bundle, "pt2")
    with pytest.raises(ConfigError, match="no model.onnx, which --runtime onnx runs"):
        open_bundle(bundle, "onnx")
    (bundle / TOKENIZER).unlink()
    with pytest.raises(BundleError, match=r"assets/item_title/tokenizer\.json: missing"):
        load(bundle)


def test_the_golden_check_allows_each_output_its_recorded_tolerance(bundle):
    outputs = json.loads((bundle / "manifest.json").read_text())["outputs"]
    assert outputs["click"]["golden_tolerance"] == {"rtol": 1e-4, "atol": 1e-5}  # a probability
    assert outputs["watch_time"]["golden_tolerance"] == {"rtol": 1e-4, "atol": 1e-4}  # an unbounded value
    golden = json.loads((bundle / "golden.json").read_text())
    expected = np.asarray(golden["outputs"]["watch_time"])
    allowed = 1e-4 + 1e-4 * np.abs(expected)

    def check_with(watch_time):
        (bundle / "golden.json").write_text(json.dumps({**golden, "outputs": {**golden["outputs"],
                                                                              "watch_time": list(watch_time)}}))
        write_checksums(bundle)
        load_onnx(bundle).check()

    assert (0.5 * allowed > 1e-4).any()  # values above 1: the relative term is what lets the next one pass
    check_with(expected + 0.5 * allowed)  # within rtol and atol together, though beyond atol alone
    worst = expected + 0.5 * allowed
    worst[3] += 2 * allowed[3]
    allowed_there = 1e-4 + 1e-4 * abs(worst[3])
    with pytest.raises(AssertionError, match=rf"task 'watch_time' row 3 scores .* against the golden .*: a difference "
                                             rf"of .* where {allowed_there:.3g} is allowed \(rtol 0\.0001, atol 0\.0001\)"):
        check_with(worst)
