"""The course's CSV of CLIP image embeddings (``path, 512 floats``), written once and reused.

File layout (plain CSV plus ``#`` comment lines, so ``pandas.read_csv(comment="#")`` reads it):

    # labutils clip-embeddings v1 model_id=ViT-B/32 fingerprint=<sha256 of the weights> dim=512
    path,size,mtime_ns,e0,...,e511
    /data/flowers/daisy/1.jpg,10841,1700000000000000000,0.0123,...
    # end rows=1164 sha256=<hash of the rows above>

- The header ties the file to one model: a cache made by other weights is refused (an error,
  or rebuilt with ``on_mismatch="rebuild"``); embeddings of two models are never mixed.
- ``size`` and ``mtime_ns`` of each image: a changed file is encoded again, a new one added.
- The end line (row count and checksum) catches a truncated or edited file: it is rebuilt,
  never read half. Floats are written with 9 significant digits: float32 round-trips exactly.
- The file is replaced atomically (temporary file + ``os.replace``).
"""
from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import warnings
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import torch

VERSION = "v1"
_HEADER = re.compile(r"^# labutils clip-embeddings (\S+) model_id=(\S+) fingerprint=(\S+) "
                     r"dim=(\d+)$")
_END = re.compile(r"^# end rows=(\d+) sha256=([0-9a-f]{64})$")

Row = Tuple[int, int, List[float]]   # size, mtime_ns, embedding


class CacheMismatchError(ValueError):
    """The CSV holds another model's embeddings."""


class CacheFormatError(ValueError):
    """The CSV is truncated or malformed."""


def _stamp(path: str) -> Tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def _header(encoder) -> str:
    model_id = str(encoder.model_id).replace(" ", "_")
    return (f"# labutils clip-embeddings {VERSION} model_id={model_id} "
            f"fingerprint={encoder.fingerprint} dim={encoder.embed_dim}")


def read_cache(csv_path, encoder) -> Dict[str, Row]:
    """The rows of a cache made by ``encoder``'s weights, by path.

    Raises :class:`CacheMismatchError` for another model's file, :class:`CacheFormatError` for a
    truncated or malformed one.
    """
    text = Path(csv_path).read_text(encoding="utf-8")
    lines = text.split("\n")
    if not text.endswith("\n") or len(lines) < 4:
        raise CacheFormatError(f"{csv_path}: truncated (no end line)")
    head = _HEADER.match(lines[0])
    if not head:
        raise CacheFormatError(f"{csv_path}: first line is not a labutils embedding header")
    version, model_id, fingerprint, dim = head.groups()
    if fingerprint != encoder.fingerprint or int(dim) != encoder.embed_dim:
        raise CacheMismatchError(
            f"{csv_path} holds embeddings of model {model_id} (weights {fingerprint[:12]}, "
            f"{dim}-d), not of {encoder.model_id} (weights {encoder.fingerprint[:12]}). "
            "Use another CSV path, or pass on_mismatch='rebuild' to replace it.")
    if version != VERSION:
        raise CacheFormatError(f"{csv_path}: format {version}, expected {VERSION}")
    end = _END.match(lines[-2])
    if not end:
        raise CacheFormatError(f"{csv_path}: truncated (last line is not the end line)")
    body = "\n".join(lines[2:-2]) + "\n" if len(lines) > 4 else ""
    if hashlib.sha256(body.encode()).hexdigest() != end.group(2):
        raise CacheFormatError(f"{csv_path}: rows do not match their checksum (edited or damaged)")
    columns = next(csv.reader([lines[1]]))
    if columns[:3] != ["path", "size", "mtime_ns"] or len(columns) != 3 + int(dim):
        raise CacheFormatError(f"{csv_path}: unexpected columns")
    rows: Dict[str, Row] = {}
    for n, fields in enumerate(csv.reader(io.StringIO(body)), start=3):
        if len(fields) != len(columns):
            raise CacheFormatError(f"{csv_path}: line {n} has {len(fields)} fields, "
                                   f"expected {len(columns)}")
        try:
            vec = [float(v) for v in fields[3:]]
            rows[fields[0]] = (int(fields[1]), int(fields[2]), vec)
        except ValueError as err:
            raise CacheFormatError(f"{csv_path}: line {n}: {err}") from None
        if not all(map(_finite, vec)):
            raise CacheFormatError(f"{csv_path}: line {n} holds a non-finite value")
    if len(rows) != int(end.group(1)):
        raise CacheFormatError(f"{csv_path}: {len(rows)} distinct rows, end line says "
                               f"{end.group(1)}")
    return rows


def _finite(v: float) -> bool:
    return v == v and abs(v) != float("inf")


def write_cache(csv_path, encoder, rows: Dict[str, Row]) -> None:
    """Write all ``rows`` (atomically)."""
    csv_path = Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    body = io.StringIO()
    writer = csv.writer(body, lineterminator="\n")
    for path in sorted(rows):
        size, mtime, vec = rows[path]
        writer.writerow([path, size, mtime, *(f"{v:.9g}" for v in vec)])
    body = body.getvalue()
    columns = ",".join(["path", "size", "mtime_ns"] + [f"e{i}" for i in range(encoder.embed_dim)])
    digest = hashlib.sha256(body.encode()).hexdigest()
    tmp = csv_path.with_name(f".{csv_path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(f"{_header(encoder)}\n{columns}\n{body}# end rows={len(rows)} sha256={digest}\n")
    os.replace(tmp, csv_path)


def embedding_cache(csv_path, image_paths: Sequence[str], encoder,
                    on_mismatch: str = "error") -> torch.Tensor:
    """CLIP image embeddings ``[n, dim]`` (float32) of ``image_paths``, via the CSV cache.

    Only images missing from the cache, or changed since (size or mtime), are encoded; the CSV
    is then rewritten with them (rows of other images it held are kept). A truncated or
    malformed CSV is rebuilt with a warning. A CSV of another model raises
    :class:`CacheMismatchError` unless ``on_mismatch="rebuild"``.
    """
    if on_mismatch not in ("error", "rebuild"):
        raise ValueError(f"on_mismatch must be 'error' or 'rebuild', got {on_mismatch!r}")
    if not getattr(encoder, "fingerprint", ""):
        raise ValueError("the encoder has no weight fingerprint: a cache could not be tied to it")
    paths = [str(Path(p).resolve()) for p in image_paths]
    if not paths:
        raise ValueError("embedding_cache needs at least one image path")
    csv_path = Path(csv_path)
    rows: Dict[str, Row] = {}
    if csv_path.exists():
        try:
            rows = read_cache(csv_path, encoder)
        except CacheMismatchError:
            if on_mismatch == "error":
                raise
            warnings.warn(f"{csv_path} held another model's embeddings: rebuilding it",
                          stacklevel=2)
        except (CacheFormatError, UnicodeDecodeError) as err:
            warnings.warn(f"embedding cache unusable, rebuilding it: {err}", stacklevel=2)
    # Rows of files that vanished are dropped; stale rows are re-encoded.
    rows = {p: r for p, r in rows.items() if os.path.exists(p)}
    stamps = {p: _stamp(p) for p in dict.fromkeys(paths)}
    todo = [p for p, st in stamps.items() if p not in rows or rows[p][:2] != st]
    if todo:
        vecs = encoder.encode_images(todo).float()
        if vecs.shape != (len(todo), encoder.embed_dim):
            raise ValueError(f"encoder returned {tuple(vecs.shape)}, expected "
                             f"({len(todo)}, {encoder.embed_dim})")
        for p, v in zip(todo, vecs):
            rows[p] = (*stamps[p], v.tolist())
    if todo or not csv_path.exists() or len(rows) == 0:
        write_cache(csv_path, encoder, rows)
    return torch.tensor([rows[p][2] for p in paths], dtype=torch.float32)
