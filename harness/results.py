"""``results.json`` and the per-node tables: the schema version, strict JSON, and checked reading.

Every reader (the leaderboard, the model card, the lm-eval bridge) goes through :func:`load_results`
and :func:`read_table`, so a malformed file is one line naming it, never a traceback deep in a reader.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np

from harness.config import ConfigError

SCHEMA_VERSION = "odiag.results/1"  # the results.json contract this odiag writes and reads

# keys results.json must hold, with their JSON types
RESULTS_KEYS: dict[str, type | tuple[type, ...]] = {
    "schema_version": str, "config": dict, "config_hash": str, "versions": dict, "task": str, "student": str,
    "counts": dict, "teachers": list, "questions": list,
}
# keys every per-teacher row holds
TEACHER_ROW_KEYS: dict[str, type | tuple[type, ...]] = {"teacher": str, "algorithm": str}


def json_ready(obj):
    """nan/inf to None, numpy scalars to Python: strict JSON."""
    if isinstance(obj, dict):
        return {k: json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def versions(backend) -> dict:
    """What produced a run: odiag and its git commit, numpy, scipy, the backend's own description."""
    import scipy

    from harness import __version__

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {"odiag": __version__, "git_commit": commit, "numpy": np.__version__, "scipy": scipy.__version__,
            "backend": backend.describe()}


def _type_name(t) -> str:
    return " or ".join(x.__name__ for x in t) if isinstance(t, tuple) else t.__name__


def check_results(results: object, where: str) -> dict:
    """``results`` if it follows the contract (schema version, keys, types); a ConfigError naming ``where``."""
    if not isinstance(results, dict):
        raise ConfigError(f"{where}: not an odiag results file (a JSON {type(results).__name__}, not an object)")
    if results.get("schema_version") != SCHEMA_VERSION:
        raise ConfigError(f"{where}: schema_version {str(results.get('schema_version'))[:40]!r}, this odiag reads {SCHEMA_VERSION!r}")
    for key, kind in RESULTS_KEYS.items():
        if not isinstance(results.get(key), kind):
            raise ConfigError(f"{where}: key {key!r} must be a {_type_name(kind)}, got {type(results.get(key)).__name__}")
    for i, row in enumerate(results["teachers"]):
        if not isinstance(row, dict):
            raise ConfigError(f"{where}: teachers[{i}] must be an object")
        for key, kind in TEACHER_ROW_KEYS.items():
            if not isinstance(row.get(key), kind):
                raise ConfigError(f"{where}: teachers[{i}].{key} must be a {_type_name(kind)}")
        for key in ("alignment", "weighted_alignment", "incorrect_minus_correct", "teacher_advantage"):
            if row.get(key) is not None and not isinstance(row[key], dict):
                raise ConfigError(f"{where}: teachers[{i}].{key} must be an object")
            if isinstance(row.get(key), dict) and not isinstance(row[key].get("mean"), (int, float, type(None))):
                raise ConfigError(f"{where}: teachers[{i}].{key}.mean must be a number")
    return results


def load_results(run_dir: str | Path) -> dict:
    """A finished run's ``results.json``, checked; a ConfigError naming the file otherwise."""
    from harness.rundir import RunDirError, read_json

    path = Path(run_dir) / "results.json"
    if not path.is_file():
        raise ConfigError(f"{run_dir}: not a finished odiag run (no results.json); run `odiag run --out {run_dir}` first")
    try:
        data = read_json(path, "results file (JSON)")
    except RunDirError as exc:
        raise ConfigError(str(exc)) from None
    return check_results(data, str(path))


def read_table(path: str | Path, columns: tuple[str, ...] = ()):
    """A parquet table, with ``columns`` required; a ConfigError naming the file otherwise."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException, ValueError) as exc:
        raise ConfigError(f"{path}: not a readable parquet table ({str(exc).splitlines()[0][:120]})") from None
    if missing := [c for c in columns if c not in table.column_names]:
        raise ConfigError(f"{path}: no column {missing[0]!r}; rerun the same `odiag run` command to rewrite it")
    return table
