"""Bad checkpoint files and metadata: each gets a CheckpointError that says what is wrong, before any model is
built (issues 8 and 9, and the hunt around them)."""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import write_tif
from safetensors.torch import load, save, save_file

import geoarray
from geoarray.checkpoint import read_metadata
from geoarray.errors import CheckpointError
from geoarray.models import create_model


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    m = create_model("unet", in_channels=3, num_classes=2, width=4, depth=2)
    return geoarray.save_checkpoint(
        tmp_path_factory.mktemp("ckpt") / "good.safetensors",
        m,
        task="segmentation",
        bands=["red", "green", "nir"],
        mean=[1, 2, 3],
        std=[1, 1, 2],
        classes=["bg", "fg"],
    )


def _parts(path: Path) -> tuple[Any, dict[str, torch.Tensor]]:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(json.loads(raw[8 : 8 + n])["__metadata__"]["geoarray"]), load(raw)


def _rewrite(src: Path, dst: Path, *, doc: Callable | None = None, tensors: Callable | None = None) -> Path:
    """``src`` with its document and/or tensors changed, and its checksum (if it has one) recomputed, so the
    change reaches the check under test rather than the checksum."""
    d, t = _parts(src)
    stored = d.get("content_sha256")
    if doc is not None:
        new = doc(d)
        d = d if new is None else new
    if tensors is not None:
        tensors(t)
    if isinstance(d, dict) and "content_sha256" in d and d["content_sha256"] == stored:
        from geoarray._checkpoint_checks import digest

        body = save(t)
        n = int.from_bytes(body[:8], "little")
        index = json.loads(body[8 : 8 + n])
        index.pop("__metadata__", None)
        d["content_sha256"] = digest(d, index, body[8 + n :])
    save_file(t, str(dst), metadata={"geoarray": json.dumps(d)})
    return dst


def _set(key: str, value: Any) -> Callable[[dict], None]:
    def mutate(d: dict) -> None:
        *parents, last = key.split(".")
        for p in parents:
            d = d[p]
        d[last] = value

    return mutate


def _drop(key: str) -> Callable[[dict], None]:
    def mutate(d: dict) -> None:
        *parents, last = key.split(".")
        for p in parents:
            d = d[p]
        del d[last]

    return mutate


def _both(*fns: Callable[[dict], None]) -> Callable[[dict], None]:
    def mutate(d: dict) -> None:
        for f in fns:
            f(d)

    return mutate


# (id, mutation of the JSON document, message pattern, read_metadata refuses it too (no model needed))
META_CASES = [
    ("mean shorter than bands", _set("input.mean", [0.5]), r"input\.mean=\[0\.5\]; expected 3 numbers, one per band", True),
    ("std longer than bands", _set("input.std", [1, 1, 1, 1]), r"input\.std=.*expected 3 numbers", True),
    ("std zero", _set("input.std", [1.0, 0.0, 1.0]), r"input\.std=.*finite positive numbers", True),
    ("std a string", _set("input.std", "1"), r"input\.std='1'; expected a list of 3 numbers", True),
    ("mean NaN", _set("input.mean", [0.0, float("nan"), 0.0]), r"input\.mean=.*finite numbers", True),
    ("mean a bool", _set("input.mean", [True, 0.0, 0.0]), r"input\.mean=.*finite numbers", True),
    ("bands missing", _drop("input.bands"), r"lacks 'input\.bands'", True),
    ("bands a string", _set("input.bands", "rgb"), r"input\.bands='rgb'; expected a non-empty list", True),
    ("bands duplicated", _set("input.bands", ["red", "red", "nir"]), r"distinct band names", True),
    ("bands empty", _both(_set("input.bands", []), _set("input.mean", []), _set("input.std", [])), r"input\.bands=\[\]", True),
    ("input missing", _drop("input"), r"lacks 'input'; expected an object describing the input bands", True),
    ("scale NaN", _set("input.scale", float("nan")), r"input\.scale=nan; expected a finite positive", True),
    ("scale zero", _set("input.scale", 0), r"input\.scale=0", True),
    ("input kind unknown", _set("input.kind", "video"), r"input\.kind='video'", True),
    ("time_series inconsistent", _set("input.time_series", True), r"input\.time_series=True; expected False", True),
    ("sensor a number", _set("input.sensor", 2), r"input\.sensor=2", True),
    ("date encoding unknown", _set("input.date_encoding", "weekly"), r"date_encoding='weekly'; expected null, 'doy' or 'days'", True),
    ("dtype float16", _set("input.dtype", "float16"), r"input\.dtype='float16'; expected 'float32'", True),
    ("classes not a list", _set("output.classes", "bg,fg"), r"output\.classes='bg,fg'", True),
    ("classes duplicated", _set("output.classes", ["bg", "bg"]), r"distinct class names", True),
    ("classes missing", _drop("output.classes"), r"lacks 'output\.classes'", True),
    ("output kind of another task", _set("output.kind", "features"), r"output\.kind='features'; expected 'multilabel' or 'segmentation'", True),
    ("output variables unknown", _set("output.variables", ["entropy"]), r"output\.variables=\['entropy'\]", True),
    ("task unknown", _set("task", "regression"), r"task='regression'; expected one of", True),
    ("halo negative", _set("halo", -4), r"halo=-4; expected a multiple of the stride", True),
    ("halo below receptive field", _set("halo", 0), r"halo=0; expected a multiple of the stride 2 that is at least", True),
    ("receptive field negative", _set("receptive_field", -1), r"receptive_field=-1; expected a non-negative integer", True),
    ("receptive field a float", _set("receptive_field", 7.5), r"receptive_field=7\.5", True),
    ("stride zero", _set("stride", 0), r"stride=0; expected a positive integer", True),
    ("format version from the future", _set("format_version", 99), r"format 99; this geoarray reads format 1\. Upgrade geoarray", True),
    ("format version a string", _set("format_version", "1"), r"format_version='1'; expected 1", True),
    ("format version zero", _set("format_version", 0), r"format_version=0; expected 1", True),
    ("format version missing", _drop("format_version"), r"lacks 'format_version'", True),
    ("document a list", lambda d: [d], r"has document=\[.*expected a JSON object", True),
    ("model missing", _drop("model"), r"lacks 'model'; expected an object with the model's name", True),
    ("model name empty", _set("model.name", ""), r"model\.name=''", True),
    ("hparams a list", _set("model.hparams", [3, 2]), r"model\.hparams=\[3, 2\]; expected an object", True),
    ("training a list", _set("training", [1]), r"training=\[1\]; expected an object", True),
    ("checksum malformed", _set("content_sha256", "abc"), r"content_sha256='abc'; expected 64 lowercase hex digits", True),
    ("checksum key name damaged", lambda d: d.update(bontent_sha256=d.pop("content_sha256")), r"unknown key\(s\) \['bontent_sha256'\]", True),
    ("input key misspelt", lambda d: d["input"].update(sensr="S2"), r"unknown key\(s\) \['input\.sensr'\]; expected only \['bands'", True),
    # need the model: load_checkpoint only
    ("model not registered", _set("model.name", "unet3d"), r"needs model 'unet3d', which this geoarray does not register.*Upgrade geoarray, or import", False),
    ("hparams rejected", _set("model.hparams.depth", 0), r"hparams don't build model 'unet'.*depth=0; expected 2\.\.7", False),
    ("hparam unknown", _set("model.hparams.layers", 3), r"hparams don't build model 'unet'.*no hparam\(s\) \['layers'\]", False),
    ("hparam out of range", _set("model.hparams.width", -1), r"hparams don't build model 'unet'.*width=-1; expected an integer >= 1", False),
    ("hparams a 36 TB model", _set("model.hparams.width", 10**6), r"weights don't fit model 'unet'.*wrong shape", False),
    ("hparams of another model", _set("model.hparams.width", 8), r"weights don't fit model 'unet'.*wrong shape", False),
    ("classes shorter than outputs", _set("output.classes", ["bg"]), r"1 class names \['bg'\] for 2 output channels", False),
    ("classes longer than outputs", _set("output.classes", ["a", "b", "c"]), r"3 class names .* for 2 output channels", False),
    ("bands more than in_channels", _both(_set("input.bands", list("abcd")), _set("input.mean", [0] * 4), _set("input.std", [1] * 4)), r"4 bands \['a', 'b', 'c', 'd'\] for in_channels=3", False),
    ("stride not the model's", _both(_set("stride", 4), _set("halo", 8)), r"stride is 4, the model's is 2", False),
    ("input kind not the model's", _both(_set("input.kind", "sequence"), _set("input.time_series", True)), r"input\.kind is 'sequence', the model's is 'image'", False),
]  # fmt: skip


@pytest.mark.parametrize(
    ("mutate", "match", "header_only"), [c[1:] for c in META_CASES], ids=[c[0] for c in META_CASES]
)
def test_bad_metadata(ckpt, tmp_path, mutate, match, header_only):
    bad = _rewrite(ckpt, tmp_path / "bad.safetensors", doc=mutate)
    with pytest.raises(CheckpointError, match=match):
        geoarray.load_checkpoint(bad)
    if header_only:
        with pytest.raises(CheckpointError, match=match):
            read_metadata(bad)


def _first_float(t: dict[str, torch.Tensor]) -> str:
    return sorted(k for k, v in t.items() if v.is_floating_point() and v.ndim)[0]


def _pop_first(t):
    t.pop(_first_float(t))


def _add_extra(t):
    t["extra.weight"] = torch.zeros(2)


def _reshape_first(t):
    k = _first_float(t)
    t[k] = torch.zeros(t[k].numel() + 1)


def _int_first(t):
    k = _first_float(t)
    t[k] = t[k].to(torch.int32)


def _pop_all(t):
    t.clear()


TENSOR_CASES = [
    ("a tensor missing", _pop_first, r"weights don't fit model 'unet'.*missing 1: \['decoder"),
    ("an unexpected tensor", _add_extra, r"unexpected 1: \['extra\.weight'\]"),
    ("a tensor of another shape", _reshape_first, r"wrong shape 1: \['decoder.* \(model \[4, 8, 3, 3\]\)'\]"),
    ("a float weight stored as int32", _int_first, r"wrong dtype 1: \['decoder.* I32 \(model float32\)'\]"),
    ("no tensors at all", _pop_all, r"missing \d+:"),
]


@pytest.mark.parametrize(("mutate", "match"), [c[1:] for c in TENSOR_CASES], ids=[c[0] for c in TENSOR_CASES])
def test_weights_that_dont_fit(ckpt, tmp_path, mutate, match):
    bad = _rewrite(ckpt, tmp_path / "bad.safetensors", tensors=mutate)
    with pytest.raises(CheckpointError, match=match):
        geoarray.load_checkpoint(bad)


def _bytes(fn: Callable[[bytes], bytes]) -> Callable[[Path, Path], Path]:
    def make(good: Path, tmp: Path) -> Path:
        p = tmp / "bad.safetensors"
        p.write_bytes(fn(good.read_bytes()))
        return p

    return make


def _header_len(raw: bytes) -> int:
    return int.from_bytes(raw[:8], "little")


def _torch_zip(good: Path, tmp: Path) -> Path:
    p = tmp / "bad.safetensors"
    torch.save(create_model("unet", in_channels=3, num_classes=2, width=4, depth=2).state_dict(), p)
    return p


def _plain(good: Path, tmp: Path) -> Path:
    save_file({"w": torch.zeros(3)}, str(tmp / "bad.safetensors"))
    return tmp / "bad.safetensors"


def _other_library(good: Path, tmp: Path) -> Path:
    _, t = _parts(good)
    save_file(t, str(tmp / "bad.safetensors"), metadata={"format": "pt"})  # what transformers writes
    return tmp / "bad.safetensors"


def _text_metadata(good: Path, tmp: Path) -> Path:
    _, t = _parts(good)
    save_file(t, str(tmp / "bad.safetensors"), metadata={"geoarray": "{'model': 'unet'}"})
    return tmp / "bad.safetensors"


def _deep_metadata(good: Path, tmp: Path) -> Path:
    _, t = _parts(good)
    save_file(t, str(tmp / "bad.safetensors"), metadata={"geoarray": "[" * 100_000 + "]" * 100_000})
    return tmp / "bad.safetensors"


def _geotiff(good: Path, tmp: Path) -> Path:
    return write_tif(tmp / "bad.safetensors", np.ones((2, 16, 16), dtype=np.uint16))


def _directory(good: Path, tmp: Path) -> Path:
    d = tmp / "run"
    d.mkdir()
    (d / "best.safetensors").write_bytes(good.read_bytes())
    return d


def _header(payload: bytes) -> Callable[[bytes], bytes]:
    return lambda raw: len(payload).to_bytes(8, "little") + payload


FILE_CASES = [
    ("zero bytes", _bytes(lambda raw: b""), r"not a readable \.safetensors file \(the file is empty\)"),
    ("seven bytes", _bytes(lambda raw: raw[:7]), r"7 bytes, less than the 8-byte header length"),
    ("truncated inside the header", _bytes(lambda raw: raw[: _header_len(raw) // 2]), r"announce a \d+-byte header, the file has \d+ bytes; truncated"),
    ("truncated in the weights", _bytes(lambda raw: raw[: len(raw) // 2]), r"has \d+ bytes where its header describes \d+: the file is truncated"),
    ("truncated by one byte", _bytes(lambda raw: raw[:-1]), r"the file is truncated"),
    ("bytes appended", _bytes(lambda raw: raw + b"\0" * 8), r"longer than its contents"),
    ("a torch.save zip renamed", _torch_zip, r"zip archive, as torch\.save writes.*never loads pickles"),
    ("a safetensors file without metadata", _plain, r"without geoarray metadata \(metadata keys: \[\]\)"),
    ("another library's safetensors", _other_library, r"without geoarray metadata \(metadata keys: \['format'\]\)"),
    ("metadata that is not JSON", _text_metadata, r"corrupt geoarray metadata: not JSON"),
    ("metadata nested 100000 deep", _deep_metadata, r"corrupt geoarray metadata: not JSON \(maximum recursion"),
    ("a GeoTIFF renamed", _geotiff, r"not a readable \.safetensors file \(it is a TIFF image\)"),
    ("a character device", lambda good, tmp: Path("/dev/null"), r"no checkpoint file at '/dev/null' \(not a regular file\)"),
    ("a header that is not JSON", _bytes(_header(b"{not json}   ")), r"its header is not JSON"),
    ("a header that is a JSON list", _bytes(_header(b"[1, 2]  ")), r"its header is not a JSON object"),
    ("a header entry with negative offsets", _bytes(_header(b'{"w":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}}')), r"malformed header entry 'w'"),
    ("a directory", _directory, r"is a directory; expected a \.safetensors checkpoint file, such as one of \['best\.safetensors'\]"),
    ("a path that does not exist", lambda good, tmp: tmp / "nope.safetensors", r"no checkpoint file at .* \(it does not exist\)"),
]  # fmt: skip


@pytest.mark.parametrize("make, match", [c[1:] for c in FILE_CASES], ids=[c[0] for c in FILE_CASES])
def test_bad_files(ckpt, tmp_path, make, match):
    bad = make(ckpt, tmp_path)
    for fn in (geoarray.load_checkpoint, read_metadata):
        with pytest.raises(CheckpointError, match=match):
            fn(bad)


class _Marker:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_a_pickle_is_named_and_never_run(tmp_path, protocol):
    marker = tmp_path / "ran"
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(pickle.dumps({"state_dict": _Marker(str(marker))}, protocol=protocol))
    with pytest.raises(CheckpointError, match=r"it is a Python pickle\).*never loads pickles"):
        geoarray.load_checkpoint(bad)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("device", "match"),
    [("gpu", r"device='gpu' is not a torch device"), ("meta", r"device='meta'; expected 'cpu', 'cuda'")]
    + ([] if torch.cuda.is_available() else [("cuda", r"device='cuda', but torch sees no CUDA GPU here")]),
)
def test_a_device_torch_cannot_use(ckpt, device, match):
    with pytest.raises(CheckpointError, match=match):
        geoarray.load_checkpoint(ckpt, device=device)


def test_loading_never_reaches_an_unpickler(ckpt, tmp_path, monkeypatch):
    """Guard for item 6: no code path of read/load may unpickle, not even for a file it then refuses."""

    def refuse(*args, **kwargs):
        raise AssertionError("checkpoint loading called an unpickler")

    for owner, name in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")):
        monkeypatch.setattr(owner, name, refuse)
    geoarray.load_checkpoint(ckpt)
    evil = tmp_path / "evil.safetensors"
    evil.write_bytes(pickle.dumps({"w": 1}))
    with pytest.raises(CheckpointError):
        geoarray.load_checkpoint(evil)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_file(ckpt, tmp_path):
    bad = tmp_path / "locked.safetensors"
    bad.write_bytes(ckpt.read_bytes())
    bad.chmod(0)
    with pytest.raises(CheckpointError, match=r"cannot open the checkpoint .*check its permissions"):
        geoarray.load_checkpoint(bad)


SAVE_CASES = [
    ("duplicate bands", {"bands": ["a", "a", "b"]}, r"input\.bands=\['a', 'a', 'b'\]; expected a non-empty list of distinct"),
    ("NaN mean", {"mean": [0, float("nan"), 0]}, r"input\.mean=.*finite numbers"),
    ("infinite std", {"std": [1, float("inf"), 1]}, r"std=.*not finite"),
    ("zero scale", {"scale": 0}, r"input\.scale=0\.0; expected a finite positive number"),
    ("sensor a number", {"sensor": 2}, r"input\.sensor=2"),
    ("unknown date encoding", {"date_encoding": "weekly"}, r"date_encoding='weekly'"),
    ("training not a dict", {"training": [1]}, r"training=\[1\]; expected an object"),
]  # fmt: skip


@pytest.mark.parametrize("kw, match", [c[1:] for c in SAVE_CASES], ids=[c[0] for c in SAVE_CASES])
def test_save_refuses_what_load_would_refuse(tmp_path, kw, match):
    m = create_model("unet", in_channels=3, num_classes=2, width=4, depth=2)
    out = tmp_path / "m.safetensors"
    args = {"task": "segmentation", "bands": ["a", "b", "c"], **kw}
    with pytest.raises(CheckpointError, match=match):
        geoarray.save_checkpoint(out, m, **args)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_save_checks_classifier_class_count(tmp_path):
    m = create_model("resnet18", in_channels=3, num_classes=4, width=8)
    with pytest.raises(
        CheckpointError, match=r"2 class names \['a', 'b'\] for a model with 4 output channels"
    ):
        geoarray.save_checkpoint(
            tmp_path / "c.safetensors", m, task="classification", bands=list("xyz"), classes=["a", "b"]
        )
    assert not list(tmp_path.iterdir())
