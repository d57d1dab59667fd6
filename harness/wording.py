"""Words that agree with their counts in what odiag prints."""


def plural(count: float | None, word: str, words: str | None = None) -> str:
    """``word`` for a count of one, else its plural (``words``, or ``word`` + "s"): "1 question", "0 questions"."""
    return word if count == 1 else words or f"{word}s"


def shell_word(word) -> str:
    """``word`` (a path, a name) as a shell reads it back: quoted where it holds spaces, ``$`` or quotes."""
    import shlex

    return shlex.quote(str(word))


def finish_command(run_dir, *more: str) -> str:
    """``odiag run`` with the settings the run directory ``run_dir`` records, as a line to paste into a shell
    (a directory named with spaces or ``$`` quoted)."""
    from pathlib import Path

    words = ["odiag", "run", "--config", Path(run_dir) / "config.yaml", "--out", run_dir, *more]
    return " ".join(shell_word(w) for w in words)
