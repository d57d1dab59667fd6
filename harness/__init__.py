"""odiag: a training-free diagnostic harness for on-policy distillation (see README.md)."""

__version__ = "0.1.0"
