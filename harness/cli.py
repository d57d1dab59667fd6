"""The ``odiag`` command line: a thin layer over the library (progress and printing live here)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time


def _selfcheck(args: argparse.Namespace) -> int:
    from harness.selfcheck import SelfcheckConfig, format_report, run_selfcheck

    summary = run_selfcheck(SelfcheckConfig(questions=args.questions, seed=args.seed))
    print(json.dumps(summary, indent=2) if args.json else format_report(summary))
    return 0 if summary["passed"] else 1


class _Progress:
    """Progress bars on a terminal (tqdm), plain log lines otherwise; nothing with --quiet."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.bars: dict = {}
        self.t0 = time.monotonic()

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self.quiet:
            return
        if self.tty:
            from tqdm import tqdm

            bar = self.bars.get(stage) or self.bars.setdefault(stage, tqdm(total=total, desc=stage, leave=True))
            bar.n = done
            bar.refresh()
            if done >= total:
                bar.close()
        else:
            print(f"[{time.monotonic() - self.t0:7.1f}s] {stage}: {done}/{total}", file=sys.stderr, flush=True)


def _summary_table(results: dict) -> str:
    lines = [f"{'teacher':<22} {'algorithm':<18} {'rank':>4} {'alignment':>9} {'95% CI':>18} {'n_q':>4}"]
    for row in results["teachers"]:
        a = row.get("alignment") or {}
        mean = a.get("mean")
        ci = a.get("ci95") or [None, None]
        fmt = lambda x: "   nan" if x is None or x != x else f"{x:+.3f}"
        lines.append(
            f"{row['teacher']:<22} {row['algorithm']:<18} {row.get('rank') or '-':>4} {fmt(mean):>9} "
            f"{'[' + fmt(ci[0]) + ', ' + fmt(ci[1]) + ']':>18} {a.get('n_questions', 0):>4}"
        )
    c = results["counts"]
    lines.append(
        f"\n{c['questions']} questions, {c['paths']} paths, {c['decision_points']} decision points, "
        f"{c['rollouts']} rollouts, {c['tokens_generated']} tokens generated, "
        f"{c['teacher_forward_passes']} teacher forward passes"
    )
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    from harness.config import resolve_run_config
    from harness.pipeline import run

    cfg = resolve_run_config(args.config, args.set)
    if not args.quiet:
        _print_plan(cfg)
    results = run(cfg, args.out, on_progress=_Progress(args.quiet))
    if not args.quiet:
        print(_summary_table(results))
        print(f"results: {args.out}/results.json")
    return 0


def _print_plan(cfg, lines: int = 12) -> None:
    """The first lines of `odiag plan` before a run (a plan that cannot be made is only mentioned)."""
    from harness.config import ConfigError
    from harness.costplan import plan_for

    try:
        text = plan_for(cfg).lines
    except (ConfigError, OSError, ValueError) as exc:
        text = [f"plan: not available ({exc})"]
    print("\n".join(text[:lines]), file=sys.stderr, flush=True)


def _plan(args: argparse.Namespace) -> int:
    from harness.costplan import main_plan

    return main_plan(args)


def _add_teacher(args: argparse.Namespace) -> int:
    from harness.pipeline import add_teacher

    results = add_teacher(args.dir, args.teacher, on_progress=_Progress(args.quiet))
    if not args.quiet:
        print(_summary_table(results))
    return 0


def _demo(args: argparse.Namespace) -> int:
    import dataclasses
    from pathlib import Path

    from harness.config import REPOSITORY, resolve_run_config
    from harness.leaderboard import main_leaderboard
    from harness.pipeline import run

    cfg = resolve_run_config(Path(__file__).resolve().parent / "demo.yaml", args.set)
    # demo.yaml names the toy student relative to the checkout, so the demo runs from any directory
    if (REPOSITORY / cfg.student).exists():
        cfg = dataclasses.replace(cfg, student=str(REPOSITORY / cfg.student))
    started = time.monotonic()
    results = run(cfg, args.out, on_progress=_Progress(args.quiet))
    print(_summary_table(results))
    code = main_leaderboard([args.out], args.site, None)
    print(f"demo finished in {time.monotonic() - started:.0f} s: run {args.out}, leaderboard {args.site}/index.html")
    return code


def _tasks_dir(args: argparse.Namespace) -> int:
    from harness.lmeval_bridge import main_tasks_dir

    return main_tasks_dir()


def _eval(args: argparse.Namespace) -> int:
    from harness.lmeval_bridge import main_eval

    return main_eval(args.lm_eval_args)


def _leaderboard(args: argparse.Namespace) -> int:
    from harness.leaderboard import main_leaderboard

    return main_leaderboard(args.run_dirs, args.out, args.viewer_mb)


def _model_card(args: argparse.Namespace) -> int:
    from harness.leaderboard import main_model_card

    return main_model_card(args.dir, args.out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="odiag", description="Where on-policy distillation helps, hurts, and why.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("selfcheck", help="check the estimators against exact ground truth (synthetic model)")
    p.add_argument("--questions", type=int, default=12, help="synthetic questions (default 12)")
    p.add_argument("--seed", type=int, default=0, help="seed of every draw (default 0)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_selfcheck)

    p = sub.add_parser("run", help="run (or resume) the diagnostic; writes DIR/results.json")
    p.add_argument("--config", help="run config YAML (optional: defaults run the synthetic task)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeatable)")
    p.add_argument("--out", required=True, help="run directory (rerun the same command to resume)")
    p.add_argument("--quiet", action="store_true", help="no progress and no summary")
    p.set_defaults(func=_run)

    p = sub.add_parser("plan", help="models, device memory per phase, rollouts, tokens and time of a run, before it runs")
    p.add_argument("--config", help="run config YAML")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeatable)")
    p.add_argument("--gpu-memory", type=float, metavar="GIB", help="device memory in GiB: refuse a plan that does not fit")
    p.add_argument("--throughput", type=float, metavar="TOK/S", help="generated tokens per second, for a wall-time estimate")
    p.add_argument("--measurements", metavar="JSON", help="bench/gpu_check.py --json output: its sampled tokens/s")
    p.set_defaults(func=_plan)

    p = sub.add_parser("add-teacher", help="score one more teacher on a finished run: forward passes only, no rollouts")
    p.add_argument("dir", help="run directory")
    p.add_argument("teacher", help="teacher YAML file or name under teachers/")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_add_teacher)

    p = sub.add_parser("demo", help="the offline demo: toy task, tiny models, every toy teacher, a leaderboard")
    p.add_argument("--out", default="runs/demo", help="run directory (default runs/demo; rerun to resume)")
    p.add_argument("--site", default="runs/demo-site", help="leaderboard site directory (default runs/demo-site)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key of harness/demo.yaml")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_demo)

    p = sub.add_parser("tasks-dir", help="print the directory of odiag's task YAMLs (for lm_eval --include_path)")
    p.set_defaults(func=_tasks_dir)

    p = sub.add_parser("eval", help="lm_eval with odiag's tasks included; every other flag passes through", add_help=False)
    p.add_argument("lm_eval_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=_eval)

    p = sub.add_parser("leaderboard", help="merge run directories into a leaderboard JSON and a static page")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="finished run directories")
    p.add_argument("--out", required=True, help="site directory (index.html, leaderboard.json, figures/)")
    p.add_argument("--viewer-mb", type=float, default=None, help="size budget of the per-token viewer's data in MB (default 25)")
    p.set_defaults(func=_leaderboard)

    p = sub.add_parser("model-card", help="a run's headline numbers as Hugging Face model-index YAML")
    p.add_argument("dir", help="run directory")
    p.add_argument("--out", help="write the YAML to this file instead of stdout")
    p.set_defaults(func=_model_card)
    return parser


def main(argv: list[str] | None = None) -> int:
    from harness.config import ConfigError

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["eval"]:  # everything after `eval` is lm_eval's, flags included (argparse would take them)
        args = argparse.Namespace(func=_eval, lm_eval_args=argv[1:], verbose=False)
    else:
        args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except ConfigError as exc:  # bad input: one line naming the file, the key and the fix
        print(f"odiag: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
