"""Words that agree with their counts in what odiag prints."""


def plural(count: float | None, word: str, words: str | None = None) -> str:
    """``word`` for a count of one, else its plural (``words``, or ``word`` + "s"): "1 question", "0 questions"."""
    return word if count == 1 else words or f"{word}s"
