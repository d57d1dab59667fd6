"""The exceptions odiag raises for expected failures: bad input, not bugs.

``odiag`` prints any of them as one ``odiag: error: ...`` line and exits with code 2
(``harness/cli.py``); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class OdiagError(Exception):
    """An expected failure, with what went wrong and how to fix it, in one line."""


class ConfigError(OdiagError, ValueError):
    """A configuration problem, with where it came from and how to fix it, in one line."""
