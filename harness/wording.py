"""Words that agree with their counts in what odiag prints."""


def plural(count: float | None, word: str, words: str | None = None) -> str:
    """``word`` for a count of one, else its plural (``words``, or ``word`` + "s"): "1 question", "0 questions"."""
    return word if count == 1 else words or f"{word}s"


def finish_command(run_dir, *more: str) -> str:
    """``odiag run`` with the settings the run directory ``run_dir`` records, as a line to paste into a shell
    (a directory named with spaces or ``$`` quoted)."""
    import shlex
    from pathlib import Path

    words = ["odiag", "run", "--config", str(Path(run_dir) / "config.yaml"), "--out", str(run_dir), *more]
    return " ".join(shlex.quote(w) for w in words)
