"""The ``odiag`` command line: a thin layer over the library (progress and printing live here)."""

from __future__ import annotations

import argparse
import codecs
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _selfcheck(args: argparse.Namespace) -> int:
    from harness.config import ConfigError
    from harness.results import json_ready
    from harness.selfcheck import SelfcheckConfig, format_report, run_selfcheck
    from harness.tasks.exact import SyntheticTask

    if args.questions > (most := SyntheticTask.max_questions):
        raise ConfigError(f"--questions must be <= {most:,} (the synthetic questions are generated before the first "
                          f"rollout), got {args.questions:,}")
    summary = run_selfcheck(SelfcheckConfig(questions=args.questions, seed=args.seed))
    # strict JSON: an interval over one question is null, never a bare NaN
    print(json.dumps(json_ready(summary), indent=2, allow_nan=False) if args.json else format_report(summary))
    return 0 if summary["passed"] else 1


def _reporter(args: argparse.Namespace, preamble: Callable[[], list[str]] | None = None):
    from harness.progress import Reporter

    return Reporter(quiet=args.quiet, interval=args.progress_interval, preamble=preamble)


def _reported(args: argparse.Namespace, work: Callable[[Any], dict], preamble: Callable[[], list[str]] | None = None) -> int:
    """Run ``work(on_progress)`` under the progress display, then print its summary and closing lines."""
    from harness.report import summary_table

    reporter = _reporter(args, preamble)
    try:
        results = work(reporter)
    finally:
        reporter.close()
    if not args.quiet:
        print(summary_table(results))
        print("\n".join(reporter.closing_lines()))
    return 0


def _run(args: argparse.Namespace) -> int:
    from harness.config import naming_where_set, resolve_run_config

    cfg = resolve_run_config(args.config, args.set)  # every value checked before anything heavy is imported
    from harness.pipeline import run

    # the plan's first lines once the run is checked and its directory open (a refused run prints one line)
    with naming_where_set(args.config, args.set):
        return _reported(args, lambda on_progress: run(cfg, args.out, on_progress=on_progress, repair=args.repair),
                         preamble=lambda: _plan_lines(cfg, args.out))


def _plan_lines(cfg, out) -> list[str]:
    """`odiag plan`'s lines before a run, its totals included (a plan that cannot be made is only mentioned),
    the teachers added to the run directory ``out`` among its teachers."""
    from harness.config import ConfigError
    from harness.costplan import plan_for

    try:
        return [line for line in plan_for(cfg, run_dir=out).lines if not line.startswith("wall time: give")]
    except (ConfigError, OSError, ValueError) as exc:
        return [f"plan: not available ({exc})"]


def _plan(args: argparse.Namespace) -> int:
    from harness.costplan import main_plan

    return main_plan(args)


def _rescore(args: argparse.Namespace) -> int:
    from harness.config import naming_where_set
    from harness.pipeline import rescore

    with naming_where_set(Path(args.dir) / "config.json", args.set):
        return _reported(args, lambda on_progress: rescore(args.dir, args.set, on_progress=on_progress,
                                                           drop=args.drop_teacher))


def _add_teacher(args: argparse.Namespace) -> int:
    from harness.pipeline import add_teacher

    return _reported(args, lambda on_progress: add_teacher(args.dir, args.teacher, on_progress=on_progress))


def _demo(args: argparse.Namespace) -> int:
    import dataclasses
    from pathlib import Path

    from harness.config import REPOSITORY, naming_where_set, resolve_run_config
    from harness.leaderboard import build, check_site_dir, main_leaderboard
    from harness.pipeline import run
    from harness.report import summary_table

    defaults = Path(__file__).resolve().parent / "demo.yaml"
    cfg = resolve_run_config(defaults, args.set)
    check_site_dir(Path(args.site), "--site", Path(args.out))  # before minutes of work, not after
    # demo.yaml names the toy student relative to the checkout, so the demo runs from any directory
    if (REPOSITORY / cfg.student).exists():
        cfg = dataclasses.replace(cfg, student=str(REPOSITORY / cfg.student))
    started = time.monotonic()
    reporter = _reporter(args)
    try:
        with naming_where_set(defaults, args.set):
            results = run(cfg, args.out, on_progress=reporter)
    finally:
        reporter.close()
    if args.quiet:  # the last line only: where the run and its page are
        build([args.out], args.site)
    else:
        print(summary_table(results))
        main_leaderboard([args.out], args.site, None)
        print("\n".join(reporter.closing_lines()))
    print(f"demo finished in {time.monotonic() - started:.0f} s: run {args.out}, leaderboard {args.site}/index.html")
    return 0


def _tasks_dir(args: argparse.Namespace) -> int:
    from harness.tasks import TASKS_DIR  # a path: neither lm_eval nor torch is imported to print it

    print(TASKS_DIR)
    return 0


def _eval(args: argparse.Namespace) -> int:
    from harness.errors import OdiagError
    from harness.lmeval_bridge import main_eval

    try:
        return main_eval(args.lm_eval_args)
    except BrokenPipeError:  # `odiag eval ... | head`: the reader left, as main handles it
        raise
    except ConnectionError as exc:  # the hub, without a network (a task's data set, a model)
        raise OdiagError(f"{exc}; offline, set HF_DATASETS_OFFLINE=1 and HF_HUB_OFFLINE=1 with what it names already in "
                         "the Hugging Face cache, or diagnose a local copy with odiag run (--set data_files=PATH, "
                         "--set student=DIR)") from exc
    except Exception as exc:
        if (line := _lm_eval_refusal(exc)) is None:
            raise
        raise OdiagError(line) from exc


def _lm_eval_refusal(exc: BaseException) -> str | None:
    """The line for what lm_eval refused under ``odiag eval``, or None (a bug keeps its traceback; a device out of
    memory gets main's advice). Refused: lm_eval's own check of its arguments (an unknown task), and what lm_eval,
    or a library it called with no odiag code between, raised building what it was given (``--model vllm``
    without vLLM, a folder that holds no model, a device this torch cannot use)."""
    from harness.errors import out_of_memory
    from harness.tasks import TASKS_DIR

    if out_of_memory(exc) is not None:
        return None
    frames, tb = [], exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame.f_code.co_filename)
        tb = tb.tb_next
    ours = tuple(str(d) + os.sep for d in (Path(__file__).resolve().parent, TASKS_DIR))  # harness/, tasks/ (!function)
    first = next((i for i, f in enumerate(frames) if "/lm_eval/" in f), None)
    if first is None or any(str(Path(f).resolve()).startswith(ours) for f in frames[first:]):
        return None
    if "/lm_eval/" in frames[-1] and isinstance(exc, (ValueError, KeyError, FileNotFoundError)):
        return f"lm_eval: {exc}"
    if isinstance(exc, TypeError) and "unexpected keyword argument" in str(exc):  # a --model_args key the model lacks
        return f"lm_eval: {exc}: --model_args takes only the model class's own arguments"
    if not isinstance(exc, (ValueError, KeyError, OSError, ImportError, AssertionError, RuntimeError)):
        return None
    hint = ("; vLLM runs from its own environment: pip install vllm there (in a checkout: make install-vllm, "
            "then .venv-vllm/bin/odiag eval ...)"
            if isinstance(exc, ImportError) and "vllm" in str(exc) else "")
    return f"lm_eval: {type(exc).__name__}: {exc}{hint}"


def _ls(args: argparse.Namespace) -> int:
    from harness.discover import main_ls

    return main_ls(args.what)


def _leaderboard(args: argparse.Namespace) -> int:
    from harness.leaderboard import main_leaderboard

    return main_leaderboard(args.run_dirs, args.out, args.viewer_mb)


def _model_card(args: argparse.Namespace) -> int:
    from harness.leaderboard import main_model_card

    return main_model_card(args.dir, args.out, args.model_name)


def _validate(args: argparse.Namespace) -> int:
    from harness.validate import main_validate

    reporter = _reporter(args)
    try:
        return main_validate(args.dir, args.quick, args.teachers, args.seeds, args.set, on_progress=reporter)
    finally:
        reporter.close()


class _Parser(argparse.ArgumentParser):
    """argparse with the one-line error of every other expected failure (exit code 2)."""

    def error(self, message: str):
        self.exit(2, f"odiag: error: {_one_line(message)} (see '{self.prog} --help')\n")


class _Once(argparse.Action):
    """Store an option that may be given once: a second ``--config`` would silently drop the first file."""

    def __call__(self, parser, namespace, values, option_string=None):
        given = vars(namespace).setdefault("_given_once", set())  # a default is not a first value
        if self.dest in given:
            hint = " (put every setting in one file, or override keys with --set KEY=VALUE)" if self.dest == "config" else ""
            raise argparse.ArgumentError(self, f"given twice; give it once{hint}")
        given.add(self.dest)
        setattr(namespace, self.dest, values)


def at_least(minimum: float, kind: type = int, above: bool = False, most: float | None = None) -> Callable[[str], Any]:
    """An argparse type: a number of at least ``minimum`` (``kind`` int or float); ``above``: more than
    ``minimum`` (a rate or a size, where 0 means nothing); ``most``: at most that. The benchmarks'
    command lines use it too."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text[:40]!r}") from None
        if not (value > minimum if above else value >= minimum) or value != value or value in (float("inf"), float("-inf")):
            finite = "" if kind is int else " and finite"
            raise argparse.ArgumentTypeError(f"must be {'>' if above else '>='} {minimum}{finite}, got {text[:40]!r}")
        if most is not None and value > most:
            raise argparse.ArgumentTypeError(f"must be at most {most if kind is int else format(most, ',.0f' if float(most).is_integer() else 'g')}, got {text[:40]!r}")
        return value

    return parse


def _path(text: str) -> str:
    """An argparse type: a non-empty path (an empty one would mean the current directory)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a path, got an empty string")
    return text


def _progress_interval(p: argparse.ArgumentParser) -> None:
    p.add_argument("--progress-interval", type=at_least(0.1, float), default=30.0, metavar="SECONDS",
                   help="without a terminal, a progress line at least this often (default 30)")


def build_parser() -> argparse.ArgumentParser:
    from harness import __version__
    from harness.config import RunConfig
    from harness.discover import config_help

    parser = _Parser(prog="odiag", description="Where on-policy distillation helps, hurts, and why.")
    parser.add_argument("--version", action="version", version=f"odiag {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("--debug", action="store_true", help="on an error, show the traceback instead of one line")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, **kwargs) -> argparse.ArgumentParser:
        p = sub.add_parser(name, **kwargs)
        if kwargs.get("add_help", True):  # also after the command; SUPPRESS keeps a flag given before it
            p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
            p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        return p

    p = command("selfcheck", help="check the estimators against exact ground truth (synthetic model)")
    p.add_argument("--questions", type=at_least(1), action=_Once, default=12, help="synthetic questions (default 12)")
    p.add_argument("--seed", type=at_least(0, most=2**63 - 1), action=_Once, default=0, help="seed of every draw (default 0)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_selfcheck)

    p = command(
        "run", help="run (or resume) the diagnostic; writes DIR/results.json",
        description="Run (or resume) the diagnostic; writes DIR/results.json.",
        epilog="config keys (in --config YAML, or --set KEY=VALUE; values are read as YAML):\n"
               + config_help(RunConfig),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", type=_path, action=_Once, help="run config YAML (optional: defaults run the synthetic task)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeatable)")
    p.add_argument("--out", type=_path, action=_Once, required=True, help="run directory (rerun the same command to resume)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress, no summary, no log lines")
    p.add_argument("--repair", action="store_true", help="drop corrupt shards and recompute them instead of refusing them")
    _progress_interval(p)
    p.set_defaults(func=_run)

    p = command("plan", help="models, device memory per phase, rollouts, tokens and time of a run, before it runs")
    p.add_argument("--config", type=_path, action=_Once, help="run config YAML")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeatable)")
    p.add_argument("--gpu-memory", type=at_least(0, float, above=True, most=2.0**20), action=_Once, metavar="GIB",
                   help="device memory in GiB: refuse a plan that does not fit")
    rate = p.add_mutually_exclusive_group()
    rate.add_argument("--throughput", type=at_least(0, float, above=True), action=_Once, metavar="TOK/S",
                      help="generated tokens per second, for a wall-time estimate")
    rate.add_argument("--measurements", type=_path, action=_Once, metavar="JSON",
                      help="bash bench/gpu_check.sh --json output: its sampled tokens/s")
    p.set_defaults(func=_plan)

    p = command("rescore", help="rescore a finished run's stored trees (new algorithms, jsd_beta, gamma): no rollouts")
    p.add_argument("dir", type=_path, help="run directory")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a scoring key: algorithms, jsd_beta, gamma; or where it runs: threads, executor, num_workers, "
                        "ray_address (repeatable)")
    p.add_argument("--drop-teacher", action="append", default=[], metavar="NAME",
                   help="remove a teacher added with add-teacher, its passes and its rows (repeatable; the config's "
                        "teachers plan the tree and stay)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress, no summary, no log lines")
    _progress_interval(p)
    p.set_defaults(func=_rescore)

    p = command("add-teacher", help="score one more teacher on a finished run: forward passes (and any solutions its "
                                                  "context shows), no tree rollouts")
    p.add_argument("dir", type=_path, help="run directory")
    p.add_argument("teacher", type=_path, help="teacher YAML file or name under teachers/ (odiag ls teachers)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress, no summary, no log lines")
    _progress_interval(p)
    p.set_defaults(func=_add_teacher)

    p = command("demo", help="the offline demo: toy task, tiny models, every toy teacher, a leaderboard")
    p.add_argument("--out", type=_path, action=_Once, default="runs/demo", help="run directory (default runs/demo; rerun to resume)")
    p.add_argument("--site", type=_path, action=_Once, default="runs/demo-site", help="leaderboard site directory (default runs/demo-site)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key of harness/demo.yaml")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars, no log lines")
    _progress_interval(p)
    p.set_defaults(func=_demo)

    p = command("ls", help="list odiag's tasks or teachers (name, description, what each needs)")
    p.add_argument("what", choices=["tasks", "teachers"], help="what to list")
    p.set_defaults(func=_ls)

    p = command("tasks-dir", help="print the directory of odiag's task YAMLs (for lm_eval --include_path)")
    p.set_defaults(func=_tasks_dir)

    p = command("eval", help="lm_eval (any subcommand and flag) with odiag's tasks included", add_help=False)
    p.add_argument("lm_eval_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=_eval)

    p = command("leaderboard", help="merge run directories into a leaderboard JSON and a static page")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="finished run directories")
    p.add_argument("--out", type=_path, action=_Once, required=True, help="site directory (index.html, leaderboard.json, figures/)")
    p.add_argument("--viewer-mb", type=at_least(0, float), default=None,
                   help="size budget of the per-token viewer's data in MB (default 25)")
    p.set_defaults(func=_leaderboard)

    p = command("model-card", help="a run's headline numbers as Hugging Face model-index YAML")
    p.add_argument("dir", type=_path, help="run directory")
    p.add_argument("--out", type=_path, action=_Once, help="write the YAML to this file instead of stdout (- for stdout)")
    p.add_argument("--model-name", action=_Once, metavar="NAME",
                   help="the model's name in the card, e.g. its hub id (default: the run's student; a local folder's own name)")
    p.set_defaults(func=_model_card)

    p = command("validate", help="distil the student with each teacher of a run: does alignment predict the gain?")
    p.add_argument("dir", type=_path, help="finished run directory (writes DIR/validation.json, its figure DIR/validation.svg and .png, and "
                        "every finished training under DIR/validation/ to resume from)")
    p.add_argument("--teachers", action=_Once, help="comma-separated teachers of the run (default: all)")
    p.add_argument("--quick", action="store_true", help="a small budget: 2 seeds, 8 steps of 6 questions, 24 held-out questions x 8 samples, "
                                                         "1,000 bootstrap replicates")
    p.add_argument("--seeds", type=at_least(1), action=_Once, help="training seeds per teacher x algorithm (default 3)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a validate setting (repeatable)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress, no log lines")
    _progress_interval(p)
    p.set_defaults(func=_validate)
    return parser


GLOBAL_FLAGS = ("-v", "--verbose", "--debug")
MAX_ERROR_CHARS = 600  # an error line stays a line, whatever it quotes


def _one_line(message: object) -> str:
    line = " ".join(str(message).split())
    return line if len(line) <= MAX_ERROR_CHARS else line[: MAX_ERROR_CHARS - 3] + "..."


def _describe(exc: BaseException) -> str:
    """The error line's text: an OSError names its file and the system's reason."""
    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}" + (f" -> {exc.filename2}" if exc.filename2 else "") if exc.filename else ""
        why = exc.strerror
        if isinstance(exc, (FileExistsError, NotADirectoryError)):
            why += " (a file where a directory is needed)"
        return f"{where}: {why}" if where else why
    return str(exc)


def _parse(argv: list[str]) -> argparse.Namespace:
    """The command line; ``eval`` hands everything after it to lm_eval (argparse would take its flags)."""
    head = 0
    while head < len(argv) and argv[head] in GLOBAL_FLAGS:
        head += 1
    if argv[head : head + 1] == ["eval"]:
        flags = set(argv[:head])
        return argparse.Namespace(func=_eval, lm_eval_args=argv[head + 1 :], verbose=bool(flags & {"-v", "--verbose"}),
                                  debug="--debug" in flags)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # named with the command whose help lists what it takes
        prog = f"odiag {args.command}" if getattr(args, "command", None) else "odiag"
        parser.exit(2, f"odiag: error: {_one_line('unrecognized arguments: ' + ' '.join(extra))} (see '{prog} --help')\n")
    return args


class Terminated(KeyboardInterrupt):
    """SIGTERM (a batch scheduler's time limit or pre-emption, ``kill``), raised in the main thread like
    Ctrl-C, so the same clean-up runs: open bars close, no half-written file is left, the lock is released."""


_STOPPING: list[type[KeyboardInterrupt]] = []  # the stop a signal asked for, while a command runs


def _terminate(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM during the clean-up ends the process at once
    _STOPPING.append(Terminated)
    raise Terminated


def _interrupt(signum: int, frame: object) -> None:
    """Ctrl-C as Python raises it, remembered: a library whose own processes got the signal first (vLLM's
    engine, in the terminal's process group) may fail before the KeyboardInterrupt reaches odiag."""
    _STOPPING.append(KeyboardInterrupt)
    raise KeyboardInterrupt


RESUMABLE = {"run": "out", "demo": "out", "add-teacher": "dir", "rescore": "dir", "validate": "dir"}  # what reruns pick up


def _stopped_line(args: argparse.Namespace, exc: KeyboardInterrupt) -> str:
    """The one line for a stop from outside: what stopped it and, for a command that keeps finished work
    in a directory, that rerunning the same command resumes there."""
    line = "odiag: terminated (SIGTERM)" if isinstance(exc, Terminated) else "odiag: interrupted"
    where = getattr(args, RESUMABLE.get(getattr(args, "command", None), ""), None)
    if not where or not (Path(where) / "config.json").is_file():  # stopped before the run directory was opened
        return line
    return f"{line}; finished work is kept in {where}: run the same command again to resume"


def _reader_gone() -> bool:
    """Whether the reader of stdout or stderr has closed its pipe (as ``head`` does after its lines).
    Such a stream is pointed at /dev/null, so that Python's last flush cannot fail on it, and the
    command ends quietly, as Unix tools do."""
    import os
    import select

    gone = False
    for stream in (sys.stdout, sys.stderr):
        try:
            fd = stream.fileno()
            poll = select.poll()
            poll.register(fd, select.POLLOUT)
            closed = any(events & select.POLLERR for _, events in poll.poll(0))
        except (AttributeError, OSError, ValueError):  # no file descriptor (a test's capture)
            continue
        if closed:
            os.dup2(os.open(os.devnull, os.O_WRONLY), fd)
            gone = True
    return gone


def _escape(exc: UnicodeError):
    """The ``odiag.escape`` error handler: surrogateescape where it applies, else backslashreplace."""
    try:
        return codecs.lookup_error("surrogateescape")(exc)
    except UnicodeError:
        return codecs.lookup_error("backslashreplace")(exc)


def _escape_what_it_cannot_encode(stream) -> None:
    """A stream writes the bytes of a file name that were not UTF-8 back as they came (surrogateescape,
    as ls does), and in an encoding other than UTF-8 (ASCII under ``LC_ALL=C``) writes what it cannot
    encode (a section sign, an arrow) as a backslash escape, as Python's stderr does, rather than failing."""
    try:
        if stream.errors in ("strict", "surrogateescape", "backslashreplace"):
            stream.reconfigure(errors="odiag.escape")
    except (AttributeError, LookupError, TypeError, ValueError):  # not a text stream that can be reconfigured
        pass


def main(argv: list[str] | None = None) -> int:
    """``odiag``: 0 on success; 2 with one ``odiag: error: ...`` line on stderr for any expected
    failure (bad input, a path that cannot be written); a bug keeps its traceback (exit 1)."""
    from harness.errors import OdiagError, out_of_memory

    own = argv is None  # the process's own command line: it ends when main returns
    argv = sys.argv[1:] if argv is None else list(argv)
    codecs.register_error("odiag.escape", _escape)
    for name in ("stdout", "stderr"):
        if getattr(sys, name) is None:  # closed by whoever started odiag (`2>&-`): the work goes on, its lines nowhere
            setattr(sys, name, open(os.devnull, "w"))
        _escape_what_it_cannot_encode(getattr(sys, name))
    try:
        os.getcwd()
    except FileNotFoundError:  # relative paths would name nothing, and torch's libraries fail to load from here
        print("odiag: error: the current directory no longer exists (it was removed); cd to one that does and give "
              "the command again", file=sys.stderr)
        return 2
    try:
        args = _parse(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2, its line already printed)
        return exc.code if isinstance(exc.code, int) else 0
    except KeyboardInterrupt:  # Ctrl-C while the command line (and the libraries its help reads) loads
        print("odiag: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    level = logging.DEBUG if args.verbose else logging.WARNING if getattr(args, "quiet", False) else logging.INFO
    # odiag's own lines at the chosen level; a library's notes (torch's cache statistics at exit,
    # matplotlib's font cache) only with --verbose, their warnings always
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("harness").setLevel(level)
    in_main = threading.current_thread() is threading.main_thread()  # only the main thread may set handlers
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main else None
    previous_int = signal.signal(signal.SIGINT, _interrupt) if in_main else None
    _STOPPING.clear()
    try:
        try:
            return args.func(args)
        finally:
            _shut_ray_down()
    except (OdiagError, OSError) as exc:  # bad input or an unusable path: one line, exit 2
        if _STOPPING:  # the failure of a library whose processes the same Ctrl-C or SIGTERM stopped first
            return _stopped(args, _STOPPING[0](), in_main, own)
        if isinstance(exc, BrokenPipeError) and _reader_gone():  # `odiag run | head`: finished work is kept
            return 128 + signal.SIGPIPE
        if isinstance(exc, OSError) and exc.strerror and not exc.filename:  # a failed write (disk full) names no file
            exc.filename = getattr(args, "out", None) or getattr(args, "dir", None)
        if getattr(args, "debug", False):
            traceback.print_exc()
        print(f"odiag: error: {_one_line(_describe(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        return _stopped(args, exc, in_main, own)
    except Exception as exc:  # a bug: keep the traceback visible
        if _STOPPING:  # vLLM's engine died of the Ctrl-C it got too: the stop, not a bug
            return _stopped(args, _STOPPING[0](), in_main, own)
        if (what := out_of_memory(exc)) is not None:
            if getattr(args, "debug", False):
                traceback.print_exc()
            print(f"odiag: error: {_one_line(_out_of_memory(args, what))}", file=sys.stderr)
            return 2
        traceback.print_exc()
        print("odiag: internal error: the traceback above is a bug in odiag; please report it with the command "
              "that caused it", file=sys.stderr)
        return 1
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
            # a caller in this process gets its Ctrl-C back; the process itself, once stopped, exits ignoring
            # a second one (not in a library's exit hook)
            if not (own and signal.getsignal(signal.SIGINT) is signal.SIG_IGN):
                signal.signal(signal.SIGINT, previous_int)


def _out_of_memory(args: argparse.Namespace, what: str) -> str:
    """The line for a device out of memory (``what``): where finished work is kept, and the settings that
    size a run to its device."""
    where = getattr(args, RESUMABLE.get(getattr(args, "command", None), ""), None)
    kept = f"finished work is kept in {where}; " if where and (Path(where) / "config.json").is_file() else ""
    return (f"{what}; {kept}size the run with odiag plan --gpu-memory GIB, lower student_args batch_size or "
            "score_chunk (hf) or gpu_memory_utilization (vllm), and run the same command again")


def _stopped(args: argparse.Namespace, exc: KeyboardInterrupt, in_main: bool, own: bool) -> int:
    """The stop line of a Ctrl-C or SIGTERM, and its exit code (130 or 143)."""
    if in_main:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C while it stops
    print(_stopped_line(args, exc), file=sys.stderr)
    return 128 + (signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)


def _shut_ray_down() -> None:
    """Stop a Ray cluster this command started, here rather than in Ray's exit hook, where a Ctrl-C during
    its seconds of shutdown ends in a traceback; a Ctrl-C meanwhile is ignored."""
    ray = sys.modules.get("ray")
    if ray is None or not getattr(ray, "is_initialized", lambda: False)():
        return
    in_main = threading.current_thread() is threading.main_thread()
    held = signal.signal(signal.SIGINT, signal.SIG_IGN) if in_main else None
    try:
        ray.shutdown()
    finally:
        if held is not None:
            signal.signal(signal.SIGINT, held)


if __name__ == "__main__":
    sys.exit(main())
