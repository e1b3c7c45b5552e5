"""Reading a checkpoint's bytes: the safetensors header checks, local files and objects in object storage.

Split from :mod:`geoarray.checkpoint` (which holds the public load/save functions).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from geoarray._checkpoint_checks import RESAVE, entry_ok, validate_meta
from geoarray._storage import Location, location
from geoarray.errors import CheckpointError

KEY = "geoarray"
_HEADER_MAX = 100 * 1024 * 1024  # safetensors' own limit on the JSON header
#: what a file that is not safetensors often is, by its first bytes
_MAGIC = (
    (b"PK\x03\x04", "it is a zip archive, as torch.save writes"),
    (b"II*\x00", "it is a TIFF image"),
    (b"MM\x00*", "it is a TIFF image"),
    (b"\x89HDF", "it is an HDF5 file (Keras .h5?)"),
)



@dataclass(frozen=True)
class _Header:
    doc: dict[str, Any]  # the geoarray document, validated
    index: dict[str, Any]  # safetensors' tensor entries: name -> dtype, shape, data_offsets
    data_start: int


# -- reading ----------------------------------------------------------------------------------------------
def _not_safetensors(where: str, why: str) -> CheckpointError:
    return CheckpointError(
        f"{where} is not a readable .safetensors file ({why}). geoarray checkpoints are written by "
        "geoarray.save_checkpoint / geoarray fit; it never loads pickles (.pt/.pth/.ckpt): load trusted ones "
        "yourself (torch.load(f, weights_only=True)) into create_model(...) and save_checkpoint(...) them."
    )


def _read_header(f: IO[bytes], size: int, where: str) -> _Header:
    """Parse and check the safetensors header and the geoarray document, reading only the header."""
    head = f.read(8)
    if len(head) < 8:
        raise _not_safetensors(
            where, "the file is empty" if size == 0 else f"{size} bytes, less than the 8-byte header length"
        )
    n = int.from_bytes(head, "little")
    if n > _HEADER_MAX or 8 + n > size:
        why = next((w for magic, w in _MAGIC if head.startswith(magic)), None)
        if head[:1] == b"\x80" and 2 <= head[1] <= 5:
            why = "it is a Python pickle"
        raise _not_safetensors(
            where,
            why
            or f"its first 8 bytes announce a {n}-byte header, the file has {size} bytes; truncated, or not safetensors",
        )
    try:
        header = json.loads(f.read(n))
    except (ValueError, RecursionError) as e:
        raise _not_safetensors(where, f"its header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise _not_safetensors(where, "its header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    bad = next((k for k, e in header.items() if not entry_ok(e)), None)
    if not isinstance(metadata, dict) or bad is not None:
        raise _not_safetensors(where, f"malformed header entry {bad or '__metadata__'!r}")
    expected = 8 + n + max((e["data_offsets"][1] for e in header.values()), default=0)
    if size != expected:
        raise CheckpointError(
            f"{where} has {size} bytes where its header describes {expected}: the file is "
            + (
                "truncated (an interrupted copy or download?)"
                if size < expected
                else "longer than its contents (bytes appended?)"
            )
            + ". Copy it again from an intact source."
        )
    if KEY not in metadata:
        raise CheckpointError(
            f"{where} is a safetensors file without geoarray metadata (metadata keys: {sorted(metadata)}). "
            "Expected a checkpoint written by geoarray.save_checkpoint; wrap plain weights with "
            "create_model(...).load_state_dict(...) and save_checkpoint(...)."
        )
    try:
        doc = json.loads(metadata[KEY])
    except (ValueError, TypeError, RecursionError) as e:
        raise CheckpointError(f"{where} has corrupt geoarray metadata: not JSON ({e}). {RESAVE}") from None
    validate_meta(doc, where)
    return _Header(doc=doc, index=header, data_start=8 + n)


def _checked_remote(path: str, storage_options: dict[str, Any] | None) -> Location:
    loc = location(path, storage_options)
    try:
        found = loc.isfile()
        folder = not found and loc.isdir()
    except Exception as e:  # credentials, endpoint, bucket: fsspec raises many types
        raise CheckpointError(
            f"cannot reach the checkpoint {path!r} ({type(e).__name__}: {e}); check the URL and storage_options "
            "(credentials, client_kwargs={'endpoint_url': ...})."
        ) from None
    if folder:
        raise CheckpointError(f"{path!r} is a prefix (a folder); expected the URL of a .safetensors checkpoint.")
    if not found:
        raise CheckpointError(
            f"no checkpoint object at {path!r}. Check the URL (bucket and key) and storage_options; upload it "
            "with e.g. `fsspec.filesystem('s3', **storage_options).put(local, url)`."
        )
    return loc


def _read_remote(loc: Location, where: str) -> bytes:
    """The whole object, in one pass; the header is checked first from its first bytes."""
    with loc.fs.open(loc.path, "rb") as f:
        size = int(f.size)
        _read_header(f, size, where)  # refuse a non-checkpoint before reading it whole
        f.seek(0)
        return bytes(f.read())


def _checked_path(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if p.is_dir():
        inside = sorted(q.name for q in p.glob("*.safetensors"))[:3]
        raise CheckpointError(
            f"{str(p)!r} is a directory; expected a .safetensors checkpoint file"
            + (f", such as one of {inside} inside it." if inside else ".")
        )
    if not p.is_file():
        raise CheckpointError(
            f"no checkpoint file at {str(p)!r} ({'not a regular file' if p.exists() else 'it does not exist'}). "
            "Check the path: geoarray fit writes the file given as `out=`."
        )
    return p


def _open(p: Path) -> IO[bytes]:
    try:
        return open(p, "rb")
    except OSError as e:
        raise CheckpointError(
            f"cannot open the checkpoint {str(p)!r}: {e.strerror}; check its permissions."
        ) from None
