"""``results.json`` and the per-node tables: the schema version, what they hold, and writing them.

The node records' schema is :class:`harness.core.records.NodeRecord`; readers (the leaderboard, the
model card, the lm-eval bridge) check files against it and :data:`SCHEMA_VERSION` through
:mod:`harness.safeio` and :func:`harness.leaderboard.merge.read_results`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

SCHEMA_VERSION = "odiag.results/1"  # the results.json contract this odiag writes and reads


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
    from harness.config import checkout_commit

    return {"odiag": __version__, "git_commit": checkout_commit(), "numpy": np.__version__, "scipy": scipy.__version__,
            "backend": backend.describe()}


# writing -------------------------------------------------------------------------------------------

PATH_FIELDS = ("question_id", "path_id", "correct", "outcome", "tokens", "text", "prompt")


def teacher_rows(nodes: dict[str, np.ndarray], teachers, algorithms, seed: int) -> list[dict]:
    """The per-teacher rows of results.json (SPEC §5): ``aggregate`` of the node records (one array per
    field), and a row saying so for every teacher x algorithm without a decision point."""
    from harness.core import aggregate

    rows = aggregate(nodes, seed=seed) if len(nodes["alignment"]) else []
    found = {(r["teacher"], r["algorithm"]) for r in rows}
    for t in teachers:
        for a in algorithms:
            if (t.name, a) not in found:
                rows.append({"teacher": t.name, "algorithm": a, "rank": None, "n_decision_points": 0})
    return rows


def build_results(cfg, teachers, states, nodes: dict[str, np.ndarray], skipped: dict, backend, artefact_samples: int,
                  n_min: int, task_settings: dict | None = None, identities: dict[str, str] | None = None,
                  models: dict[str, str] | None = None) -> dict:
    """results.json (SPEC §6 contract) from the run's question states and node records; strict JSON, portable.
    ``identities``: each teacher's identity (its file and models, by content); ``models``: each local model's
    fingerprint, as ``config.json`` records them, so that a leaderboard never ranks two files as one teacher or
    student."""
    import datetime

    from harness.backends import STUDENT
    from harness.config import portable, to_dict
    from harness.tasks import OUTCOMES

    states = list(states)
    rollouts = sum(len(s.responses) + sum(b["rollouts"] for b in s.budget) for s in states)
    tokens = sum(int(sum(len(r) for r in s.responses)) + sum(b["tokens_generated"] for b in s.budget) for s in states)
    answers = [s.answers() for s in states]
    path_outcomes = [OUTCOMES[o] for s in states for o in s.path_outcome]
    results = {
        "schema_version": SCHEMA_VERSION,
        "config": to_dict(cfg),
        "config_hash": cfg.hash(),
        "versions": versions(backend),
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "task": cfg.task,
        "task_settings": task_settings,  # what of the task judged and planned (harness.plan.RunPlan.task_record)
        "student": cfg.student,
        "models": dict(models or {}),  # {model: fingerprint of its files}, for the models on this machine
        "counts": {
            "questions": len(states),
            "paths": sum(len(s.paths) for s in states),
            "decision_points": _decision_points(nodes),
            "rollouts": rollouts,
            "tokens_generated": tokens,
            "teacher_forward_passes": sum(s.scores.scored(key) for s in states for key in s.scores if key[1] != STUDENT),
            "student_forward_passes": sum(len(s.paths) for s in states),
            # fill passes the records stand on (pipeline._fill_passes), at most one per path and model: ids the
            # passes above did not keep (a grown run's wider fill replaces the one before, and counts once)
            "fill_forward_passes": sum(len(s.fills) for s in states),
            "rollouts_this_invocation": backend.rollouts,
            "forward_passes_this_invocation": backend.passes,
            "skipped_nodes": skipped,
            "n_min": n_min,  # what below_n_min counts against: the setting, or the task's default where it is None
            "initial_answers": {k: sum(a[k] for a in answers) for k in answers[0]} if answers else {},
            "path_outcomes": {name: path_outcomes.count(name) for name in OUTCOMES},
            # questions where truncated or unparseable rollouts were kept out of the incorrect paths
            "questions_with_excluded_incorrect": sum(s.excluded_incorrect > 0 for s in states),
            # context artefacts are not rollouts of the tree: counted apart, so add-teacher can prove it drew none
            "artefact_samples_this_invocation": artefact_samples,
        },
        "teacher_info": {t.name: {"description": t.description, "model": t.model, "file": t.file,
                                  "identity": (identities or {}).get(t.name)} for t in teachers},
        "teachers": teacher_rows(nodes, teachers, cfg.algorithms, cfg.seed),
        "questions": [
            {
                "id": s.question.id,
                "initial_accuracy": float(np.mean(s.rewards)) if len(s.rewards) else None,
                "answers": s.answers(),
                "paths": len(s.paths),
                "correct_paths": int(sum(s.path_correct)),
                "path_outcomes": [OUTCOMES[o] for o in s.path_outcome],
                "excluded_incorrect": s.excluded_incorrect,
                "note": s.note,
                "budget": s.budget,
                "skipped_teachers": skipped_teachers(s),
            }
            for s in states
        ],
    }
    return portable(json_ready(results))


def _decision_points(nodes: dict[str, np.ndarray]) -> int:
    """How many (question, path, position) the node table has rows for."""
    if not len(nodes["position"]):
        return 0
    _, question = np.unique(nodes["question_id"], return_inverse=True)
    return len(np.unique(np.stack([question.reshape(-1), nodes["path_id"], nodes["position"]]), axis=1).T)


def skipped_teachers(state) -> dict[str, str]:
    """Each teacher skipped on some path of a question, with the reason, and the paths when not all of
    them (a context may need more wrong solutions than a wrong path leaves: every path is checked)."""
    paths: dict[str, tuple[str, list[int]]] = {}
    for (j, name), skip in sorted(state.scores.skips().items(), key=lambda item: item[0]):
        paths.setdefault(name, (skip.reason, []))[1].append(j)
    return {name: reason if len(js) == len(state.paths) else f"{reason} (paths {', '.join(map(str, js))} of {len(state.paths)})"
            for name, (reason, js) in paths.items()}


def read_tables(root: Path, results: dict, columns: dict[str, Sequence[str]]) -> dict:
    """The tables ``columns`` names (file name: required columns) of the run in ``root``, as pyarrow
    Tables; refuse (one line) any that is not the one ``results`` (its results.json) was written with.
    Each is parsed from the bytes that were hashed, so a table another command writes meanwhile cannot
    pass the check and then be read. A run written before the hashes has none to check."""
    from harness.errors import ConfigError
    from harness.safeio import parquet_bytes, parse_parquet

    tables = {}
    for name, needed in columns.items():
        data = parquet_bytes(root / name)
        digest = (results.get("tables") or {}).get(name)
        if digest is not None and hashlib.sha256(data).hexdigest() != digest:
            from harness.wording import finish_command

            raise ConfigError(f"{root / name}: not the table results.json was written with (another command is "
                              "writing this run, one was stopped while writing it, or the file was edited or replaced "
                              "since); wait for that command, or write the run's tables again with "
                              f"{finish_command(root)}")
        tables[name] = parse_parquet(root / name, data, needed)
    return tables


def write_outputs(root: Path, results: dict, nodes: dict[str, np.ndarray], children: dict[str, np.ndarray],
                  paths: list[dict]) -> None:
    """results.json removed, then nodes.parquet, children.parquet (each from one array per field),
    paths.parquet, then results.json with the tables' sha256 (``tables``): a run is finished when it
    exists, and a reader can tell tables of another invocation (a grow or rescore that was stopped, or
    is writing now) by their hashes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from harness.core.records import CHILD_DTYPES, NODE_DTYPES
    from harness.rundir import atomic_write, write_json

    def write(name, table):
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        data = sink.getvalue().to_pybytes()
        atomic_write(root / name, lambda f: f.write(data))
        return hashlib.sha256(data).hexdigest()

    def typed(cols, dtypes):
        arrow = {"string": pa.string(), "int64": pa.int64(), "bool": pa.bool_(), "float64": pa.float64()}
        return pa.table({f: pa.array(cols[f], type=arrow[t]) for f, t in dtypes.items()})

    (root / "results.json").unlink(missing_ok=True)  # from here until the end the run reads as unfinished
    results["tables"] = {
        "nodes.parquet": write("nodes.parquet", typed(nodes, NODE_DTYPES)),
        "children.parquet": write("children.parquet", typed(children, CHILD_DTYPES)),
        "paths.parquet": write("paths.parquet", pa.Table.from_pylist(paths) if paths else pa.table({f: [] for f in PATH_FIELDS})),
    }
    write_json(root / "results.json", results)
