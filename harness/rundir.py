"""The run directory: resolved config, durable shards, per-node records and results (SPEC §6).

Every file is written whole or not at all (a temporary file in the same folder, fsync, rename), so
a run killed at any moment (``kill -9``) leaves only complete shards; started again with the same
command it loads them and redoes only what is missing. Layout::

    DIR/config.yaml             the resolved run config (human-readable)
    DIR/config.json             the same, with its hash; a different config on the same DIR is refused
    DIR/shards/<question>/...   initial rollouts, teacher passes, targeted-rollout rounds (.npz)
    DIR/added_teachers.json     teachers added later with ``odiag add-teacher``
    DIR/nodes.parquet           one row per decision point x teacher x algorithm
    DIR/children.parquet        one row per decision point x teacher x child in A(s) (for the viewer)
    DIR/paths.parquet           one row per representative path (tokens, their text, outcome)
    DIR/results.json            the aggregates (SPEC §6 contract)
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import yaml

from harness.config import EXECUTION_FIELDS, ConfigError, RunConfig, to_dict


def atomic_write(path: Path, write: Callable[[object], None], mode: str = "wb") -> None:
    """Write ``path`` through ``write(fileobj)`` so that it appears complete or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_json(path: Path, obj: object) -> None:
    text = json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n"
    atomic_write(path, lambda f: f.write(text), mode="w")


def ragged(arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(flat, offsets) of a list of 1-D int arrays."""
    offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
    np.cumsum([len(a) for a in arrays], out=offsets[1:])
    flat = np.concatenate(arrays).astype(np.int64) if arrays else np.zeros(0, np.int64)
    return flat, offsets


def unragged(flat: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
    return [flat[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]


class RunDir:
    """A run directory bound to one resolved config."""

    def __init__(self, root: Path, config: RunConfig):
        self.root, self.config = root, config

    @staticmethod
    def open(root: str | Path, config: RunConfig) -> RunDir:
        """Create ``root`` for ``config``, or reopen it; refuse it if it holds another config."""
        root = Path(root)
        saved = root / "config.json"
        mine = {"config": to_dict(config), "config_hash": config.hash()}
        if saved.exists():
            theirs = json.loads(saved.read_text())
            if theirs["config_hash"] != mine["config_hash"]:
                diff = [
                    f"{k}: {theirs['config'].get(k)!r} there, {v!r} now"
                    for k, v in mine["config"].items()
                    if theirs["config"].get(k) != v and k not in EXECUTION_FIELDS
                ]
                raise ConfigError(
                    f"{root} holds a run with a different config ({'; '.join(diff)}); "
                    "use another --out, or the same settings to resume"
                )
        else:
            root.mkdir(parents=True, exist_ok=True)
            atomic_write(root / "config.yaml", lambda f: yaml.safe_dump(mine["config"], f, sort_keys=False), "w")
            write_json(saved, mine)
        return RunDir(root, config)

    @staticmethod
    def load_config(root: str | Path) -> RunConfig:
        """The config a run directory was made with."""
        path = Path(root) / "config.json"
        if not path.exists():
            raise ConfigError(f"{root}: not an odiag run directory (no config.json)")
        from harness.config import build

        return build(RunConfig, json.loads(path.read_text())["config"], str(path))

    def shard(self, question: str, name: str) -> Path:
        return self.root / "shards" / question / f"{name}.npz"

    def load(self, question: str, name: str) -> dict[str, np.ndarray] | None:
        """A shard's arrays, or None when it was never completed."""
        path = self.shard(question, name)
        if not path.exists():
            return None
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}

    def save(self, question: str, name: str, **arrays: np.ndarray) -> None:
        atomic_write(self.shard(question, name), lambda f: np.savez(f, **arrays))

    def added_teachers(self) -> list[str]:
        path = self.root / "added_teachers.json"
        return json.loads(path.read_text()) if path.exists() else []

    def add_teacher(self, name: str) -> None:
        names = self.added_teachers()
        if name not in names:
            write_json(self.root / "added_teachers.json", names + [name])
