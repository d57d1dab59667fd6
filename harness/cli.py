"""The ``odiag`` command line: a thin layer over the library (progress and printing live here)."""

from __future__ import annotations

import argparse
import json
import logging
import sys


def _selfcheck(args: argparse.Namespace) -> int:
    from harness.selfcheck import SelfcheckConfig, format_report, run_selfcheck

    summary = run_selfcheck(SelfcheckConfig(questions=args.questions, seed=args.seed))
    print(json.dumps(summary, indent=2) if args.json else format_report(summary))
    return 0 if summary["passed"] else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="odiag", description="Where on-policy distillation helps, hurts, and why.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("selfcheck", help="check the estimators against exact ground truth (synthetic model)")
    p.add_argument("--questions", type=int, default=12, help="synthetic questions (default 12)")
    p.add_argument("--seed", type=int, default=0, help="seed of every draw (default 0)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_selfcheck)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
