"""Read run directories and merge them into one leaderboard (SPEC §5, §6).

A leaderboard entry is one task x student x teacher x algorithm of one run: the run's aggregates
for that row of ``results.json``, plus what it cost (decision points, rollouts, tokens). Runs of the
same task and student are compared with each other, so ranks are recomputed over all their entries
within each algorithm (``rank_with_ties``: the order by mean alignment, and which CIs overlap).
Every run's provenance (config and hash, versions, counts, creation time) is kept whole.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import re
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from harness import __version__
from harness.config import STRATEGY_FIELDS, ConfigError, RunConfig, checkout_commit, numeric_part, tree_fields, unread_fields
from harness.core.records import CHILD_FIELDS, NODE_COLUMNS
from harness.core.stats import rank_with_ties
from harness.results import PATH_FIELDS, read_tables
from harness.results import SCHEMA_VERSION as RESULTS_SCHEMA
from harness.rundir import RunDir
from harness.safeio import excerpt, read_json
from harness.tasks import OUTCOMES
from harness.wording import shell_word

SCHEMA_VERSION = "odiag.leaderboard/1"
GROUP_ID_CHARS = 200  # a group id names figure files (with "--correct-vs-incorrect.svg" and the like): under 255 bytes
# (group ids are ASCII: characters are bytes)
RUN_ID_BYTES = 100  # a run id too ("--validation.svg")
TABLES = ("nodes", "children", "paths")
# The headline algorithm of figures that show one algorithm: GKD is the distillation loss most
# pipelines use (the paper's default); a run without it falls back to its first algorithm.
HEADLINE_ALGORITHM = "gkd"


@dataclasses.dataclass(frozen=True)
class Run:
    """One run directory, read whole: results.json and its three per-node tables."""

    id: str  # short unique name within a leaderboard (the directory name, made unique)
    path: str  # the directory as given
    results: dict  # results.json
    nodes: dict[str, np.ndarray]  # nodes.parquet, column -> values (one row per decision point x teacher x algorithm)
    children: dict[str, np.ndarray]  # children.parquet, column -> values (one row per decision point x teacher x child in A(s))
    paths: list[dict]  # paths.parquet rows (question_id, path_id, correct, tokens, text)

    @property
    def group(self) -> tuple[str, str]:
        """The (task, student) pair: runs in one group are ranked together."""
        return (str(self.results["task"]), str(self.results["student"]))


# what the readers below need of each table (an empty children table has only its key columns)
COLUMNS = {
    "nodes": NODE_COLUMNS,
    "children": CHILD_FIELDS[:5],
    "paths": tuple(c for c in PATH_FIELDS if c in ("question_id", "path_id", "correct", "tokens", "text")),
}
CHILD_VALUES = ("n", "w", "q", "pi", "pi_teacher")
# results.json keys the leaderboard and the model card read, and their JSON types
RESULTS_KEYS = {"task": str, "student": str, "config": dict, "config_hash": str, "versions": dict, "counts": dict,
                "teachers": list}
ROW_STATS = ("alignment", "weighted_alignment", "alignment_correct", "alignment_incorrect", "incorrect_minus_correct",
             "teacher_advantage")


def read_results(path: str | Path) -> dict:
    """``results.json``, checked against what its readers use; a malformed one is one line naming it."""
    results = read_json(path)

    def malformed(why: str) -> ConfigError:
        return ConfigError(f"{path}: malformed odiag results ({why})")

    if not isinstance(results, dict):
        raise malformed(f"a JSON {type(results).__name__}, expected an object")
    if results.get("schema_version") != RESULTS_SCHEMA:
        raise ConfigError(f"{path}: schema_version {excerpt(results.get('schema_version'))}, this odiag reads {RESULTS_SCHEMA!r}")
    for key, kind in RESULTS_KEYS.items():
        if not isinstance(results.get(key), kind):
            raise malformed(f"{key!r} is {excerpt(results.get(key), 40)}, expected a {kind.__name__}")
    for key in ("questions", "paths", "decision_points", "rollouts", "tokens_generated"):
        if not isinstance(results["counts"].get(key), int):
            raise malformed(f"counts.{key} is {excerpt(results['counts'].get(key), 40)}, expected an integer")
    window = results["config"].get("window", 50)
    if not (isinstance(window, int) and not isinstance(window, bool) and window >= 1):
        raise malformed(f"config.window is {excerpt(window, 40)}, expected an integer >= 1")
    for i, row in enumerate(results["teachers"]):
        if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in ("teacher", "algorithm")):
            raise malformed(f"teachers[{i}] is {excerpt(row, 60)}, expected an object with teacher and algorithm names")
        if not _count_or_none(row.get("rank")):
            raise malformed(f"teachers[{i}].rank is {excerpt(row.get('rank'), 40)}, expected an integer or null")
        for key in ROW_STATS:
            stat = row.get(key)
            if stat is None:
                continue
            if not (isinstance(stat, dict) and _number_or_none(stat.get("mean"))):
                raise malformed(f"teachers[{i}].{key} is {excerpt(stat, 60)}, expected an object with a finite numeric mean")
            ci = stat.get("ci95")
            if ci is not None and not (isinstance(ci, list) and len(ci) == 2 and all(map(_number_or_none, ci))):
                raise malformed(f"teachers[{i}].{key}.ci95 is {excerpt(ci, 40)}, expected [low, high]")
            for field in ("p_paired", "p_clustered"):
                if not _number_or_none(stat.get(field)):
                    raise malformed(f"teachers[{i}].{key}.{field} is {excerpt(stat.get(field), 40)}, expected a number or null")
            if not _count_or_none(stat.get("n_questions")):
                raise malformed(f"teachers[{i}].{key}.n_questions is {excerpt(stat.get('n_questions'), 40)}, "
                                "expected an integer or null")
            pooled = stat.get("pooled")  # incorrect minus correct over every path (what p_clustered tests)
            if pooled is not None and not (isinstance(pooled, dict) and _number_or_none(pooled.get("mean")) and (
                    isinstance(pooled.get("ci95"), list) and len(pooled["ci95"]) == 2 and all(map(_number_or_none, pooled["ci95"])))):
                raise malformed(f"teachers[{i}].{key}.pooled is {excerpt(pooled, 60)}, expected an object with a mean and ci95")
        correlations = row.get("divergence_correlations")
        if correlations is not None and not (isinstance(correlations, dict) and all(
                isinstance(c, dict) and all(isinstance(c.get(m), dict) and _number_or_none(c[m].get("mean"))
                                            for m in c) for c in correlations.values())):
            raise malformed(f"teachers[{i}].divergence_correlations is {excerpt(correlations, 60)}, expected "
                            "{divergence: {spearman, pearson: {mean, ...}}}")
    return results


def _number_or_none(x) -> bool:
    """A finite number (not a bool), or None: what results.json writes for a statistic."""
    return x is None or (isinstance(x, (int, float)) and not isinstance(x, bool) and bool(np.isfinite(x)))


def _count_or_none(x) -> bool:
    return x is None or (isinstance(x, int) and not isinstance(x, bool))


def load_run(path: str | Path, run_id: str) -> Run:
    """Read a finished run directory; refuse anything that is not one, saying what is missing or malformed."""
    root = Path(path)
    results_file = RunDir.finished_results(root)
    results = read_results(results_file)
    missing = [f"{t}.parquet" for t in TABLES if not (root / f"{t}.parquet").is_file()]
    if missing:
        raise ConfigError(f"{root}: missing {', '.join(missing)}; rerun the same `odiag run` command to write them")
    read = read_tables(root, results, {f"{t}.parquet": COLUMNS[t] for t in TABLES})
    tables = {t: read[f"{t}.parquet"] for t in TABLES}
    if tables["children"].num_rows and (gone := [c for c in CHILD_VALUES if c not in tables["children"].column_names]):
        raise ConfigError(f"{root / 'children.parquet'}: missing column(s) {', '.join(gone)}; not written by this odiag")
    listed = {row["teacher"] for row in results["teachers"]}
    if unlisted := sorted(set(map(str, tables["nodes"].column("teacher").to_pylist())) - listed):
        raise ConfigError(f"{results_file}: malformed odiag results (nodes.parquet holds teacher {unlisted[0]!r}, which its "
                          f"teachers do not list); rerun the same `odiag run` command to write them again")
    nodes = _columns(tables["nodes"])
    check_rows(root, results, nodes)
    return Run(
        id=run_id,
        path=str(path),
        results=results,
        nodes=nodes,
        children=_columns(tables["children"]),
        paths=tables["paths"].to_pylist(),
    )


# the headline numbers check_rows recomputes: their definitions have stayed put across odiag's versions, while the
# intervals and tests beside them gained fields and rules (a results.json written earlier reads otherwise there)
CHECKED = ("alignment", "weighted_alignment", "alignment_correct", "alignment_incorrect", "fraction_positive",
           "teacher_advantage")


def check_rows(root: Path, results: dict, nodes: dict[str, np.ndarray]) -> None:
    """Refuse (one line) a results.json whose headline numbers are not what its node records give: each
    teacher row's means (`CHECKED`, with their question counts) and decision points are aggregated again
    from nodes.parquet and compared to 1e-9, so a number edited by hand, the tables' hashes unchanged, is
    never published. The intervals are not recomputed (no bootstrap: one resample suffices for the means)."""
    from harness.core import aggregate
    from harness.wording import finish_command

    try:
        computed = {(r["teacher"], r["algorithm"]): r for r in aggregate(nodes, seed=0, n_boot=1)} if len(
            nodes["alignment"]) else {}
    except ValueError as exc:  # node records no odiag writes
        raise ConfigError(f"{root / 'nodes.parquet'}: its node records cannot be aggregated ({exc}); rerun the odiag "
                          "command that made the run") from None
    fix = (f"remove it and run {finish_command(root)} to write it again from the run's records"
           if (root / "config.yaml").is_file() else "rerun the odiag command that made the run")
    for row in results["teachers"]:
        key = (row.get("teacher"), row.get("algorithm"))
        mine = computed.pop(key, None)
        if mine is None:
            if row.get("n_decision_points"):
                raise ConfigError(f"{root / 'results.json'}: {key[0]}/{key[1]} has {row['n_decision_points']} decision "
                                  f"points there and none in nodes.parquet; {fix}")
            continue
        pairs = [("n_decision_points", row.get("n_decision_points"), mine["n_decision_points"])]
        for stat in CHECKED:
            given = row.get(stat) if isinstance(row.get(stat), dict) else {}
            pairs += [(f"{stat}: {k}", given.get(k), mine[stat][k]) for k in ("mean", "n_questions")]
        for what, recorded, own in pairs:
            if not _same(recorded, own):
                raise ConfigError(f"{root / 'results.json'}: {key[0]}/{key[1]}: {what} is {excerpt(recorded, 40)} there "
                                  f"and {excerpt(_plain(own), 40)} from nodes.parquet; {fix}")
    if computed:
        raise ConfigError(f"{root / 'results.json'}: no row for {'/'.join(next(iter(computed)))}, which nodes.parquet "
                          f"holds; {fix}")


def _plain(value):
    """A recomputed number as results.json writes it (nan as None)."""
    return None if isinstance(value, float) and not np.isfinite(value) else value


def _same(recorded, computed) -> bool:
    computed = _plain(computed)
    if isinstance(recorded, bool) or isinstance(computed, bool) or None in (recorded, computed):
        return recorded is computed or recorded == computed
    if isinstance(recorded, (int, float)) and isinstance(computed, (int, float, np.number)):
        return bool(np.isclose(recorded, computed, rtol=1e-9, atol=1e-12))
    return False


def _columns(table) -> dict[str, np.ndarray]:
    """A pyarrow Table as one array per column. A string column is an object array whose rows share one
    ``str`` per distinct value (a teacher's name repeats on every one of its rows: a string per row took
    most of a large run's memory here)."""
    import pyarrow as pa

    out = {}
    for name in table.column_names:
        column = table.column(name)
        if pa.types.is_string(column.type) and not column.null_count:
            coded = column.combine_chunks().dictionary_encode()
            values = np.array(coded.dictionary.to_pylist(), dtype=object)
            out[name] = values[coded.indices.to_numpy(zero_copy_only=False)]
        else:
            out[name] = column.to_numpy(zero_copy_only=False)
    return out


def _cut(name: str, whole: str, limit: int) -> str:
    """``name`` (a file name stem) within ``limit`` UTF-8 bytes: as it is, or cut and told apart by a hash of
    ``whole``, what it names."""
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) <= limit:
        return name
    digest = hashlib.sha256(whole.encode("utf-8", "surrogateescape")).hexdigest()[:10]
    return f"{raw[: limit - 11].decode('utf-8', 'ignore')}-{digest}"


def run_ids(paths: Sequence[str | Path]) -> list[str]:
    """Short unique ids from directory names: ``runs/demo`` -> ``demo``; repeats get ``-2``, ``-3``."""
    ids: list[str] = []
    for p in paths:
        # letters of any script kept (composed first: é typed as e and an accent is one letter)
        base = re.sub(r"[^\w.-]+", "_", unicodedata.normalize("NFC", Path(p).resolve().name)) or "run"
        base = _cut(base, base, RUN_ID_BYTES)  # it names figure files
        name, k = base, 2
        while name in ids:
            name, k = f"{base}-{k}", k + 1
        ids.append(name)
    return ids


def load_runs(paths: Sequence[str | Path]) -> list[Run]:
    if not paths:
        raise ConfigError("leaderboard: give at least one run directory")
    seen: dict[Path, str | Path] = {}
    for p in paths:
        if (key := Path(p).resolve()) in seen:
            raise ConfigError(f"leaderboard: run directory {p} is given twice (as {str(seen[key])!r} and {str(p)!r}); "
                              "give each run once")
        seen[key] = p
    runs = [load_run(p, i) for p, i in zip(paths, run_ids(paths), strict=True)]
    check_comparable(runs)
    return runs


# Settings that change what a row of a group measures: (key, the algorithm it defines, or None for every row).
# Another temperature is another student distribution; other incorrect_outcomes, other incorrect paths; every
# other field that shapes the rollout tree decides how a row is estimated (the student's numerics, the paths,
# the decision points a strategy picks, the support A(s), the visits), as does the budget and the task's
# answer checker: under two of them one teacher would outrank another by the settings. Another seed or data
# file is another sample of the same measurement, and another backend the same student sampled elsewhere.
SAMPLE_FIELDS = ("task", "student", "seed", "data_files", "backend")
TASK_SETTINGS = ("answer_checker", "answer_type", "stop_ids")  # results.json's task_settings, where both have them
_FIRST = ("temperature", "incorrect_outcomes", "cascade", "strategy")
COMPARABLE = (
    *((k, None) for k in _FIRST),
    *((k, None) for k in (*tree_fields(RunConfig()), "student_args", "budget") if k not in (*SAMPLE_FIELDS, *_FIRST)),
    *((k, None) for k in TASK_SETTINGS),
    ("jsd_beta", "jsd"), ("gamma", "minillm"),
)


def _settings(run: Run, other: Run, key: str) -> tuple:
    """Two runs' values of a COMPARABLE key, as they were used: ``student_args``' options that move a number,
    ``incorrect_outcomes`` as a set; a key of results.json's ``task_settings`` (the answer checker, ``n_min``
    and the length limit as the task resolved them) where both runs record it, else as their configs gave it
    (``n_min`` as resolved either way); a task setting recorded by one run only is not compared (None, None)."""
    def one(r: Run):
        config = r.results["config"]
        if key == "student_args":
            return numeric_part(config[key] if isinstance(config.get(key), dict) else {})
        if key == "incorrect_outcomes" and isinstance(config.get(key), list):
            return sorted(map(str, config[key]), key=lambda x: (OUTCOMES.index(x) if x in OUTCOMES else len(OUTCOMES), x))
        task = r.results.get("task_settings") if isinstance(r.results.get("task_settings"), dict) else {}
        if key == "n_min" and isinstance(resolved := task.get(key, r.results["counts"].get(key)), int):
            return resolved
        return None if key in TASK_SETTINGS else config.get(key)

    tasks = [r.results.get("task_settings") for r in (run, other)]
    if all(isinstance(t, dict) and key in t for t in tasks):
        return tasks[0][key], tasks[1][key]
    return one(run), one(other)


def _question_ids(run: Run) -> set[str]:
    questions = run.results.get("questions")
    return {str(q["id"]) for q in questions if isinstance(q, dict) and "id" in q} if isinstance(questions, list) else set()


def check_comparable(runs: Sequence[Run]) -> None:
    """Refuse runs ranked together (same task and student) whose rows measure different things
    (``COMPARABLE``), or that score one teacher on the same rollouts (a run and its copy)."""
    first: dict[tuple, Run] = {}
    for run in runs:
        algorithms = {row["algorithm"] for row in run.results["teachers"]}
        strategy = run.results["config"].get("strategy")
        unread = unread_fields(strategy) if strategy in STRATEGY_FIELDS else set()
        for key, algorithm in COMPARABLE:
            if (algorithm is not None and algorithm not in algorithms) or key in unread:
                continue
            other = first.setdefault((*run.group, key, algorithm), run)
            mine, theirs = _settings(run, other, key)
            if mine != theirs:
                rows = "their rows" if algorithm is None else f"their {algorithm} rows"
                # every loss setting the two differ in, so that the rescore named is the last one needed
                both = algorithms & {row["algorithm"] for row in other.results["teachers"]}
                keys = [key, *(k for k, a in COMPARABLE if a in both and k != key
                               and run.results["config"].get(k) != other.results["config"].get(k))]
                fix = " ".join(f"--set {k}={other.results['config'].get(k)}" for k in keys)
                raise ConfigError(f"leaderboard: runs {other.path} and {run.path} ({run.group[0]}, student {run.group[1]}) "
                                  f"differ in {key} ({theirs} and {mine}), so {rows} measure different things; put them "
                                  f"on separate leaderboards" + ("" if algorithm is None else f", or odiag rescore {shell_word(run.path)} with {fix}"))
    for i, run in enumerate(runs):
        for other in runs[:i]:
            if other.group == run.group:
                _check_same_models(other, run)
            if other.group != run.group or any(other.results["config"].get(k) != run.results["config"].get(k)
                                               for k in ("seed", "data_files")):
                continue  # other rollouts, or other documents under the same ids
            shared = sorted(_question_ids(run) & _question_ids(other))
            teachers = sorted({row["teacher"] for row in run.results["teachers"]} & {row["teacher"] for row in other.results["teachers"]})
            if shared and teachers:
                more = f" and {len(shared) - 1} more" if len(shared) > 1 else ""
                raise ConfigError(
                    f"leaderboard: runs {other.path} and {run.path} both score teacher {teachers[0]!r} on the same rollouts "
                    f"(seed {run.results['config'].get('seed')}, question {shared[0]}{more}), as a run and its copy do, so "
                    f"ranked together it would count twice; give one of them (odiag add-teacher adds teachers to one run), "
                    f"or draw the other with another --set seed"
                )


def _check_same_models(run: Run, other: Run) -> None:
    """Refuse two runs of one group drawn from different files of the student, or naming different teacher files
    alike: ranked together, two models would read as one. Each is compared where both runs record it (a run of an
    older odiag records neither)."""
    def fingerprint(r: Run) -> str | None:
        models = r.results.get("models")
        return models.get(r.group[1]) if isinstance(models, dict) else None

    def identity(r: Run, teacher: str) -> str | None:
        info = r.results.get("teacher_info")
        info = info.get(teacher) if isinstance(info, dict) else None
        return info.get("identity") if isinstance(info, dict) else None

    where = f"leaderboard: runs {run.path} and {other.path} ({run.group[0]}, student {run.group[1]})"
    if None not in (mine := fingerprint(run), theirs := fingerprint(other)) and mine != theirs:
        raise ConfigError(f"{where} were drawn from different files of the student (fingerprints {mine} and {theirs}), "
                          "so their rows measure different models; put them on separate leaderboards")
    for teacher in sorted({row["teacher"] for row in run.results["teachers"]} & {row["teacher"] for row in other.results["teachers"]}):
        if None not in (mine := identity(run, teacher), theirs := identity(other, teacher)) and mine != theirs:
            raise ConfigError(
                f"{where} name two different teachers {teacher!r} (identities {mine} and {theirs}: another file, "
                "or other models), which would be ranked as one; put them on separate leaderboards, or score one of "
                "them under another name (a renamed copy of its file: odiag add-teacher adds it to a finished run)")


def headline_algorithm(algorithms: Sequence[str]) -> str:
    return HEADLINE_ALGORITHM if HEADLINE_ALGORITHM in algorithms else sorted(algorithms)[0]


def _provenance(run: Run) -> dict:
    r = run.results
    return {
        "id": run.id,
        "path": run.path,
        "schema_version": r["schema_version"],
        "task": r["task"],
        "student": r["student"],
        "created_at": r.get("created_at"),
        "config": r["config"],
        "config_hash": r["config_hash"],
        "versions": r["versions"],
        "counts": r["counts"],
        "models": r.get("models", {}),  # each local model's fingerprint (none from an older odiag, or synthetic ones)
        "teacher_info": r.get("teacher_info", {}),
    }


def teacher_labels(runs: Sequence[Run]) -> dict[tuple[str, str], str]:
    """Display name of each (run, teacher): the teacher, or ``teacher @ run`` where a group repeats it. No two
    teachers of a group share a label: a teacher whose own name reads as another's label (one named ``t @ r``
    beside teacher ``t`` of run ``r``) gets its run too, and then a number if that is taken as well."""
    seen: dict[tuple[str, str, str], int] = {}
    for run in runs:
        for t in {row["teacher"] for row in run.results["teachers"]}:
            key = (*run.group, t)
            seen[key] = seen.get(key, 0) + 1
    pairs = [(run, t) for run in runs for t in dict.fromkeys(row["teacher"] for row in run.results["teachers"])]
    natural = {(run.id, t): t if seen[(*run.group, t)] == 1 else f"{t} @ {run.id}" for run, t in pairs}
    claims: dict[tuple[str, str, str], int] = {}
    for run, t in pairs:
        claim = (*run.group, natural[(run.id, t)])
        claims[claim] = claims.get(claim, 0) + 1
    labels: dict[tuple[str, str], str] = {}
    taken = {claim for claim, n in claims.items() if n == 1}
    # a name claimed twice: a repeated teacher's ``t @ r`` keeps it, a plain name takes its run
    clashing = sorted((p for p in pairs if claims[(*p[0].group, natural[(p[0].id, p[1])])] > 1),
                      key=lambda p: seen[(*p[0].group, p[1])] == 1)
    for run, t in pairs:
        if claims[(*run.group, natural[(run.id, t)])] == 1:
            labels[(run.id, t)] = natural[(run.id, t)]
    for run, t in clashing:
        label = natural[(run.id, t)]
        if (*run.group, label) in taken:
            label = f"{t} @ {run.id}"
        base, n = label, 2
        while (*run.group, label) in taken:
            label, n = f"{base} ({n})", n + 1
        taken.add((*run.group, label))
        labels[(run.id, t)] = label
    return labels


def _entry(run: Run, row: dict, label: str) -> dict:
    counts = run.results["counts"]
    fields = {k: v for k, v in row.items() if k not in ("teacher", "algorithm", "rank", "tied_with")}
    return {
        "key": f"{row['teacher']}/{row['algorithm']}@{run.id}",
        "task": run.results["task"],
        "student": run.results["student"],
        "run": run.id,
        "teacher": row["teacher"],
        "label": label,
        "algorithm": row["algorithm"],
        "description": run.results.get("teacher_info", {}).get(row["teacher"], {}).get("description", ""),
        "rank": None,
        "tied_with": [],
        **fields,
        "n_decision_points": row.get("n_decision_points", 0),
        # the rollout tree is shared by every teacher of a run: this is the run's whole budget
        "rollouts": counts["rollouts"],
        "tokens_generated": counts["tokens_generated"],
    }


def _nan(x) -> float:
    return float("nan") if x is None else float(x)


def merge(runs: Sequence[Run]) -> dict:
    """The leaderboard JSON: provenance of every run, groups, and one ranked entry per results row."""
    labels = teacher_labels(runs)
    entries = [_entry(run, row, labels[(run.id, row["teacher"])]) for run in runs for row in run.results["teachers"]]
    groups = []
    for task, student in sorted({run.group for run in runs}):
        members = [e for e in entries if (e["task"], e["student"]) == (task, student)]
        algorithms = sorted({e["algorithm"] for e in members})
        for algorithm in algorithms:
            block = [e for e in members if e["algorithm"] == algorithm]
            stats = [e.get("alignment") or {} for e in block]
            rank, tied = rank_with_ties(
                [_nan(s.get("mean")) for s in stats],
                [_nan((s.get("ci95") or [None, None])[0]) for s in stats],
                [_nan((s.get("ci95") or [None, None])[1]) for s in stats],
            )
            for e, k, t in zip(block, rank, tied, strict=True):
                # a row without decision points has no score to rank
                e["rank"] = k if e.get("alignment") else None
                e["tied_with"] = [block[j]["key"] for j in t]
        # two students can read alike once made a file name (m/s and m_s): the later one is numbered
        base = gid = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{task}--{student}")
        base = gid = _cut(base, f"{task}--{student}", GROUP_ID_CHARS)  # a student's long local path
        k = 2
        while gid in {g["id"] for g in groups}:
            gid, k = f"{base}-{k}", k + 1
        groups.append({
            "id": gid,
            "task": task,
            "student": student,
            "runs": [run.id for run in runs if run.group == (task, student)],
            "algorithms": algorithms,
            "headline_algorithm": headline_algorithm(algorithms),
            "teachers": sorted({e["label"] for e in members}),
        })
    entries.sort(key=lambda e: (e["task"], e["student"], e["algorithm"], e["rank"] or 1 << 30, e["label"]))
    return {
        "schema_version": SCHEMA_VERSION,
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "generator": {"odiag": __version__, "git_commit": checkout_commit(), "results_schema": RESULTS_SCHEMA},
        "runs": [_provenance(run) for run in runs],
        "groups": groups,
        "entries": entries,
    }
