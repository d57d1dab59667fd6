"""Functions the odiag task YAMLs name with ``!function`` (lm-eval loads this file by path).

They live in the ``harness`` package; this file only makes them reachable from the YAMLs, so that
``lm_eval --include_path tasks`` and odiag read the same definitions.
"""

from harness.lmeval_bridge import DiagnosticTask
from harness.tasks.lmeval import aime_docs, boolq_docs, lm_eval_result, mmlu_docs
from harness.toy import toy_docs


def toy_dataset(toy_digits=7, toy_questions=64, toy_seed=2025, **_metadata):
    """lm-eval ``custom_dataset``: the toy questions as a ``test`` split (generated, no download)."""
    import datasets

    return datasets.DatasetDict({"test": datasets.Dataset.from_list(toy_docs(toy_digits, toy_questions, toy_seed))})


def process_results_boolean(doc, results):
    return lm_eval_result("boolean", doc, ["False", "True"][int(doc["label"])], results)


def process_results_choice(doc, results):
    return lm_eval_result("choice", doc, "ABCDEFGHIJ"[int(doc["answer"])], results)


def process_results_integer(doc, results):
    return lm_eval_result("integer", doc, str(doc["answer"]), results)


__all__ = ["DiagnosticTask", "aime_docs", "boolq_docs", "mmlu_docs", "toy_dataset"]
