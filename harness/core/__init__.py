"""The pure algorithm (numpy and scipy only): tree statistics, gradients, divergences, statistics.

Nothing here loads a model; ``tests/test_core_purity.py`` imports this package with torch,
transformers and vllm blocked.
"""

from harness.core.divergences import DIVERGENCES, all_divergences, topk_tail_divergences
from harness.core.gradients import (
    ALGORITHMS,
    TEACHER_FREE,
    NodeInputs,
    alignment_score,
    decision_support,
    drgrpo_gradient,
    forward_kl_gradient,
    gkd_gradient,
    ideal_gradient,
    jsd_gradient,
    minillm_gradient,
    reward_to_go,
    single_sample_gkd_gradient,
    teacher_advantage,
)
from harness.core.stats import (
    aggregate,
    bootstrap_ci,
    jeffreys_interval,
    paired_test,
    rank_with_ties,
    t_ci,
    clustered_difference,
    clustered_difference_test,
    wilson_interval,
    within_path_correlation,
)
from harness.core.tree import ChildTable, Exits, Rollouts, TreeStats

__all__ = [
    "ALGORITHMS",
    "TEACHER_FREE",
    "DIVERGENCES",
    "ChildTable",
    "Exits",
    "NodeInputs",
    "Rollouts",
    "TreeStats",
    "aggregate",
    "alignment_score",
    "all_divergences",
    "bootstrap_ci",
    "decision_support",
    "drgrpo_gradient",
    "forward_kl_gradient",
    "gkd_gradient",
    "ideal_gradient",
    "jeffreys_interval",
    "jsd_gradient",
    "minillm_gradient",
    "paired_test",
    "rank_with_ties",
    "reward_to_go",
    "single_sample_gkd_gradient",
    "t_ci",
    "teacher_advantage",
    "topk_tail_divergences",
    "clustered_difference",
    "clustered_difference_test",
    "wilson_interval",
    "within_path_correlation",
]
