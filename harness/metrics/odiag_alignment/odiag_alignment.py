"""odiag alignment: per-node alignment records -> per teacher x algorithm aggregates (SPEC §5).

A Hugging Face ``evaluate`` metric around ``harness.core.stats.aggregate``, so the numbers are those
of ``results.json`` whatever computes them. Load it by path (it never comes from a hub)::

    import evaluate
    from harness.metrics import ODIAG_ALIGNMENT

    metric = evaluate.load(ODIAG_ALIGNMENT)          # or evaluate.load("harness/metrics/odiag_alignment")
    scores = metric.compute(**columns, seed=seed)    # columns: one list per input, e.g. from nodes.parquet;
                                                     # seed: the run's (results.json config.seed)
    scores["alignment"]["synthetic-helpful/gkd"]     # mean alignment over questions
    scores["teachers"]                               # the full rows: CIs, tests, correlations, ranks
"""

import datasets
import evaluate
import numpy as np

from harness.core.records import NODE_COLUMNS, NODE_DTYPES
from harness.core.stats import aggregate

_CITATION = """\
@misc{odiag,
  title  = {odiag: a training-free diagnostic harness for on-policy distillation},
  note   = {Implements gradient alignment scoring of teacher configurations; see SPEC.md}
}
"""

_DESCRIPTION = """\
Per decision point of a student's rollouts, the alignment score is the cosine between the gradient a
distillation algorithm applies under a teacher and the ideal gradient of the student's success
probability. This metric aggregates per-node records (one per decision point x teacher x algorithm)
as SPEC.md section 5 does: per path, per question, then over questions with Student-t and seeded
bootstrap 95% intervals (the bootstrap from 10 questions up; none where values do not vary);
incorrect-minus-correct with paired and question-clustered p-values, and the pooled difference the latter tests; within-path
correlations of each divergence with alignment; and a ranking of teachers with CI-overlap ties.
"""

_KWARGS_DESCRIPTION = """\
Args (one value per node record; all lists of equal length):
    question_id (str), path_id (int), path_correct (bool), position (int): where the node is.
    teacher (str), algorithm (str): the configuration scored.
    alignment (float, nan when undefined), ideal_norm (float, |g*|), teacher_advantage (float),
    n_actions (int, |A(s)|), kl, reverse_kl, js, tv, prob_cosine (float): the node's values.
Keyword arguments:
    seed (int, default 0): seed of the bootstrap intervals; the run's seed (results.json config.seed)
        gives the intervals of a results.json written by this version.
    n_boot (int, default 2000): bootstrap resamples.
Returns:
    alignment: {"teacher/algorithm": mean alignment over questions}.
    weighted_alignment: {"teacher/algorithm": |g*|-weighted mean}.
    teachers: the full results rows of SPEC.md section 6, ranked within each algorithm.
Example:
    >>> metric = evaluate.load("harness/metrics/odiag_alignment")
    >>> out = metric.compute(question_id=["q0", "q0"], path_id=[0, 1], path_correct=[True, False],
    ...     position=[0, 0], teacher=["t", "t"], algorithm=["gkd", "gkd"], alignment=[0.5, 0.9],
    ...     ideal_norm=[1.0, 1.0], teacher_advantage=[0.1, 0.2], n_actions=[2, 3], kl=[0.1, 0.2],
    ...     reverse_kl=[0.1, 0.2], js=[0.0, 0.1], tv=[0.1, 0.2], prob_cosine=[0.9, 0.8])
    >>> round(out["alignment"]["t/gkd"], 2)
    0.7
"""

# one value per node record: the columns aggregate() reads, typed as the record schema types them
FEATURES = {c: NODE_DTYPES[c] for c in NODE_COLUMNS}
OPTIONS = ("seed", "n_boot")


def check_arguments(kwargs) -> None:
    """Refuse, naming it, an unknown keyword of ``compute`` (a misspelt option would be ignored) and,
    when columns are given there, a missing one (``evaluate`` would fail on it with "NoneType has no
    len()"). Columns may instead come from ``add_batch``; their values are checked by `check_columns`."""
    unknown = sorted(set(kwargs) - set(FEATURES) - set(OPTIONS))
    if unknown:
        raise ValueError(f"odiag_alignment: unknown arguments {unknown}: the inputs are the columns "
                         f"{', '.join(FEATURES)} and the options {', '.join(OPTIONS)}")
    given = [c for c in FEATURES if kwargs.get(c) is not None]
    if given and len(given) < len(FEATURES):
        missing = [c for c in FEATURES if c not in given]
        raise ValueError(f"odiag_alignment: missing input columns {missing}: give one list per column of "
                         f"nodes.parquet ({', '.join(FEATURES)})")


def check_columns(columns) -> None:
    """Refuse a null value (Arrow's None), naming its column and row: a null ``path_correct`` would count
    as an incorrect path. Ranges are checked by ``aggregate``."""
    for c in FEATURES:
        nulls = [i for i, v in enumerate(columns[c]) if v is None]
        if nulls:
            raise ValueError(f"odiag_alignment: column {c!r} holds a null at row {nulls[0]} ({len(nulls)} in all): "
                             "every node record needs every value (an undefined alignment is nan, not null)")


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class OdiagAlignment(evaluate.Metric):
    """Gradient alignment aggregates of SPEC.md section 5 from per-node records."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({k: datasets.Value(v) for k, v in FEATURES.items()}),
        )

    def compute(self, **kwargs):
        """`evaluate.Metric.compute`, after `check_arguments`: a missing column or a misspelt option is
        refused by name instead of failing deep inside ``evaluate`` or being ignored."""
        check_arguments(kwargs)
        return super().compute(**kwargs)

    def _compute(self, seed: int = 0, n_boot: int = 2000, **columns):
        check_columns(columns)
        # Python lists from Arrow, float64 kept (the numpy format would cast floats to float32).
        rows = aggregate({k: np.asarray(v) for k, v in columns.items()}, seed=seed, n_boot=n_boot)
        key = lambda r: f"{r['teacher']}/{r['algorithm']}"  # noqa: E731
        return {
            "alignment": {key(r): r["alignment"]["mean"] for r in rows},
            "weighted_alignment": {key(r): r["weighted_alignment"]["mean"] for r in rows},
            "teachers": rows,
        }
