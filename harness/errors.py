"""The exceptions odiag raises for expected failures: bad input, not bugs.

``odiag`` prints any of them as one ``odiag: error: ...`` line and exits with code 2
(``harness/cli.py``); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class OdiagError(Exception):
    """An expected failure, with what went wrong and how to fix it, in one line."""


class ConfigError(OdiagError, ValueError):
    """A configuration problem, with where it came from and how to fix it, in one line."""


class StudentArgsError(ConfigError):
    """A refusal of the run's ``student_args``, checked against the backend when a plan forms, long after the
    file or ``--set`` that gave them was read: whoever read them names where they came from."""


class NonFiniteLogits(ConfigError):
    """A model's next-token logits are NaN or inf: it overflows at its dtype, or training made it diverge."""


def first_line(exc: BaseException) -> str:
    """The first non-blank line of an exception's message (its class name when it has none)."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)


def out_of_memory(exc: BaseException) -> str | None:
    """What ran out, when ``exc`` is torch's OutOfMemoryError (CUDA, MPS, XPU: a run too big for its device, an
    expected failure, not a bug), else None. Named, not imported: this module never imports torch. Ray re-raises
    a worker's error as a subclass of it (``RayTaskError(OutOfMemoryError)``), so the class's bases are read too."""
    if not any(cls.__name__ == "OutOfMemoryError" for cls in type(exc).__mro__):
        return None
    if isinstance(getattr(exc, "cause", None), BaseException):  # Ray's: the worker's own error, whose text is torch's
        exc = exc.cause
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "out of memory")
    return f"the device ran out of memory ({first.split('. ')[0]})"
