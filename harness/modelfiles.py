"""A model by content: the files a backend loads it from, hashed.

A run directory records, for every model of its plan whose files are on this machine (a local
directory, or the Hugging Face cache's snapshot of the hub id at its revision), each file's size and
sha256 (:func:`model_files`). A later command on the directory is refused when a model's files
differ (:func:`changed_file`): retrained weights under the same path, or a hub branch that moved
under an unpinned revision, would otherwise mix two models' work in one tree. A file whose size and
modification time match the record keeps its recorded hash, so only the first command (and one after
a copy) reads the weights through.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from pathlib import Path

# not part of what a model computes: docs, licences, hidden files (merges.txt and vocab.txt are tokenizers)
IGNORED = re.compile(r"^\.|\.md$|^(LICENSE|NOTICE|USE_POLICY)", re.IGNORECASE)
CHUNK = 1 << 22  # bytes read at a time while hashing


def is_local_path(name: str) -> bool:
    """Whether a model name is a path on this machine rather than a hub id (which has one '/' at most)."""
    return name.startswith(("/", "./", "../", "~")) or name.count("/") > 1


def loadable(model_id: str) -> str:
    """``model_id`` as a loader takes it: a path from ``~`` in the user's home (a config file's
    ``student: ~/ckpt`` reaches odiag unexpanded; it is recorded as written, expanded only to load)."""
    return str(Path(model_id).expanduser()) if model_id.startswith("~") else model_id


# what a model's weights are saved as (transformers' and vLLM's formats, whole or sharded): a folder holding none
# of them has no model to load, whatever else it holds
WEIGHTS = re.compile(r"\.(safetensors|bin|pt|pth|h5|msgpack|gguf)$|\.ckpt|\.index\.json$")


def holds_no_weights(model_id: str) -> bool:
    """Whether ``model_id`` is a local directory that holds no weights file (a folder of a tokenizer and a
    config only, or one whose weights were not copied): what a backend would refuse, but only once it loads."""
    path = Path(model_id).expanduser()
    return is_local_path(model_id) and path.is_dir() and not any(WEIGHTS.search(p.name) for p in path.iterdir())


def model_dir(model_id: str, revision: str | None = None) -> Path | None:
    """The directory a backend loads ``model_id`` from: a local directory, or the hub id's snapshot in
    the Hugging Face cache at ``revision`` (default ``main``); None when neither is on this machine
    (a missing path, a hub model not downloaded, a synthetic model's name)."""
    path = Path(model_id).expanduser()
    if path.is_dir():
        return path
    if is_local_path(model_id):
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(model_id, "config.json", revision=revision)
    except Exception:  # noqa: BLE001 - an id the hub library rejects has no cached files either
        return None
    return Path(found).parent if isinstance(found, str) else None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def model_files(directory: Path, known: Mapping[str, list] | None = None) -> dict[str, list]:
    """``{name: [size, mtime_ns, sha256]}`` of every file in ``directory`` (not its folders: transformers
    and vLLM load a model from its top level, and a training run may keep checkpoints below it) that can
    change what the model computes (weights, config, tokenizer, code); a file whose size and mtime equal
    ``known``'s entry reuses its hash."""
    known = known or {}
    out = {}
    for path in sorted(directory.iterdir()):
        name = path.name
        if IGNORED.search(name) or not path.is_file():
            continue
        st = path.stat()  # follows the cache's symlinks to their blobs
        before = known.get(name)
        same = isinstance(before, list) and len(before) == 3 and before[:2] == [st.st_size, st.st_mtime_ns]
        out[name] = [st.st_size, st.st_mtime_ns, before[2] if same else _sha256(path)]
    return out


def changed_file(before: Mapping[str, list], now: Mapping[str, list]) -> str | None:
    """The first file whose content differs between two :func:`model_files` records (by size and
    sha256, not time), or that only one of them has; None when the model is the same."""
    for name in sorted({*before, *now}):
        a, b = before.get(name), now.get(name)
        if not (isinstance(a, list) and isinstance(b, list) and len(a) == len(b) == 3) or [a[0], a[2]] != [b[0], b[2]]:
            return name
    return None


def fingerprint(files: Mapping[str, list]) -> str:
    """16 hex digits of the files' names, sizes and hashes: the model's identity by content."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(f"{name}\0{files[name][0]}\0{files[name][2]}\n".encode())
    return h.hexdigest()[:16]


__all__ = ["changed_file", "fingerprint", "is_local_path", "model_dir", "model_files"]
