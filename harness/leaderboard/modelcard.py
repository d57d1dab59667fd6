"""A run's headline numbers as Hugging Face ``model-index`` metadata, for a model card's YAML header.

One result per run (task: the odiag diagnostic; dataset: the run's task), with four metrics per
teacher x algorithm: mean alignment, |g*|-weighted alignment, incorrect-minus-correct and teacher
advantage (SPEC §5). ``config`` names the teacher and algorithm; ``args`` carries the 95% CI, the
number of questions, the run's config hash (so a reader can trace a number to its run) and, on the
alignment metric, the teacher's rank. Rows without a defined mean are left out (model-index values
must be numbers). The headline algorithm (GKD) comes first, its teachers by rank, so the Hub's
evaluation widget leads with what the leaderboard leads with.
"""

from __future__ import annotations

from pathlib import Path

import yaml

TASK_TYPE = "on-policy-distillation-diagnostic"
METRICS = (
    ("alignment", "odiag_alignment", "Alignment"),
    ("weighted_alignment", "odiag_weighted_alignment", "Weighted alignment"),
    ("incorrect_minus_correct", "odiag_incorrect_minus_correct", "Incorrect minus correct"),
    ("teacher_advantage", "odiag_teacher_advantage", "Teacher advantage"),
)


def card_name(student: str) -> str:
    """The model's name in a card by default: the student's hub id, or a local folder's own name (its
    path on this machine means nothing to a reader of the card)."""
    from harness.modelfiles import is_local_path

    if not (is_local_path(student) or Path(student).expanduser().is_dir()):
        return student
    return Path(student).expanduser().resolve().name or student


def model_index(results: dict, model_name: str | None = None) -> list[dict]:
    """The ``model-index`` list for one ``results.json`` (the student, `card_name`, is the model by default)."""
    from harness.leaderboard.merge import headline_algorithm

    headline = headline_algorithm([row["algorithm"] for row in results["teachers"]])
    rows = sorted(results["teachers"], key=lambda row: (row["algorithm"] != headline, row["algorithm"],
                                                         row.get("rank") or float("inf"), row["teacher"]))
    metrics = []
    for row in rows:
        for key, metric_type, title in METRICS:
            stat = row.get(key) or {}
            if stat.get("mean") is None:
                continue
            args = {
                "teacher": row["teacher"], "algorithm": row["algorithm"],
                "ci95": None if stat.get("ci95") is None else [_round(x) for x in stat["ci95"]],
                "n_questions": stat.get("n_questions"), "config_hash": results["config_hash"],
            }
            if key == "alignment":  # the rank is by mean alignment: on another metric it would read as that one's
                args["rank"] = row.get("rank")
                args["tied_with"] = list(row.get("tied_with") or [])  # teachers/algorithms whose CIs overlap it
            if key == "incorrect_minus_correct":
                args |= {"p_paired": _significant(stat.get("p_paired")), "p_clustered": _significant(stat.get("p_clustered"))}
                if isinstance(stat.get("pooled"), dict):  # what p_clustered tests: the difference pooled over paths
                    args["pooled_mean"] = _round(stat["pooled"].get("mean"))
            metrics.append({
                "type": metric_type,
                "name": f"{title} ({row['teacher']}, {row['algorithm']})",
                "value": _round(stat["mean"]),
                "config": f"{row['teacher']}/{row['algorithm']}",
                "args": args,
                "verified": False,
            })
    return [{
        "name": model_name or card_name(str(results["student"])),
        "results": [{
            "task": {"type": TASK_TYPE, "name": "On-policy distillation gradient alignment (odiag)"},
            "dataset": {"type": str(results["task"]), "name": str(results["task"])},
            "metrics": metrics,
        }],
    }]


def _round(x: float | None) -> float | None:
    """A mean or interval end as the card shows it: 4 decimals (results.json keeps every digit)."""
    return None if x is None else round(float(x), 4) + 0.0  # + 0.0: a mean that rounds to -0 reads 0


def _significant(p: float | None) -> float | None:
    """A p-value to 3 significant digits: a small one keeps its size (1.23e-08, not 0.0)."""
    return None if p is None else float(f"{float(p):.3g}")


def model_card_yaml(run_dir: str | Path, model_name: str | None = None) -> str:
    """``model-index:`` YAML for the run in ``run_dir``, ready to paste into a model card's header."""
    from harness.leaderboard.merge import load_run

    results = load_run(run_dir, "run").results  # a finished run whose tables are the ones its results were written with
    index = model_index(results, model_name)
    if not index[0]["results"][0]["metrics"]:  # a card without a number would publish nothing
        from harness.config import ConfigError
        from harness.report import no_decision_reason

        why = (no_decision_reason(results) if not results["counts"].get("decision_points")
               else "no teacher with a defined mean (every teacher skipped at every decision point)")
        raise ConfigError(f"{run_dir}: nothing to publish, the run has {why}")
    return yaml.safe_dump({"model-index": index}, sort_keys=False, allow_unicode=True)
