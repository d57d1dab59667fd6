"""Hugging Face ``evaluate`` metric modules shipped with odiag (loaded by path, never from a hub).

``evaluate.load(ODIAG_ALIGNMENT)`` loads the SPEC §5 aggregates as a metric; see
``odiag_alignment/README.md``. Importing this package imports nothing heavy.
"""

from pathlib import Path

ODIAG_ALIGNMENT = str(Path(__file__).resolve().parent / "odiag_alignment")
