"""The leaderboard: merge run directories, draw the figures, write a static site (SPEC §6).

``build(run_dirs, out)`` writes into ``out``::

    out/leaderboard.json        schema_version, provenance of every run, one ranked entry per
                                task x student x teacher x algorithm (x run)
    out/index.html              the page: table, figures, per-token viewer; works from file://
    out/figures/<name>.svg|png  the figures (matplotlib)

Other files in ``out`` (a README, a screenshot) are left alone. ``main_leaderboard`` and
``main_model_card`` are the command-line entry points (``odiag leaderboard``, ``odiag model-card``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from harness.wording import plural

log = logging.getLogger(__name__)


def check_site_dir(out: Path, flag: str = "--out", run_out: Path | None = None) -> None:
    """Refuse (one line, naming ``flag``) to write into ``out`` when it is not a directory, when it is or
    lies in a run directory (``run_out``: the one the command is about to make), or when its page or data
    are not an odiag leaderboard's: a user's own ``index.html`` or ``leaderboard.json`` is never
    overwritten; or when it cannot be written. Commands that build a site after long work check it first."""
    from harness.config import ConfigError
    from harness.rundir import run_holding

    if out.exists() and not out.is_dir():
        raise ConfigError(f"{flag} {out}: exists and is not a directory; choose a new directory, or one odiag wrote")
    run, what = run_holding(out), "the run directory"

    def forms(path: Path) -> set[Path]:  # as named, and through its links
        return {Path(os.path.abspath(path)), path.resolve()}

    if run is None and run_out is not None and any(r in (h, *h.parents) for r in forms(run_out) for h in forms(out)):
        run, what = run_out, "the run's own directory"  # the one this command is about to make, maybe not there yet
    if run is not None:
        same = bool(forms(Path(run)) & forms(out))
        where = ("is a run directory" if what == "the run directory" else f"is {what}") if same else f"lies in {what} {run}"
        raise ConfigError(f"{flag} {out}: {where}; give the site a directory of its own")
    if (out / "index.html").exists() or (out / "leaderboard.json").exists():
        _check_ours(out, flag)
    for name in ("index.html", "leaderboard.json"):  # found only once the figures are in place
        if (out / name).exists() and not (out / name).is_file():
            raise ConfigError(f"{flag} {out}: holds {name} that is not a file, where the site's {name} goes; move it, "
                              "or choose another directory")
    figures = out / "figures"
    if figures.is_symlink() or (figures.exists() and not figures.is_dir()):  # found only once the figures are written
        what = "a link named figures" if figures.is_symlink() else "a file named figures"
        raise ConfigError(f"{flag} {out}: holds {what} where the site's figures folder goes (a build replaces that "
                          "folder); move it, or choose another directory")
    if figures.is_dir():  # a build replaces the folder's figures: only a site odiag wrote may hold one
        if (figures / "config.json").is_file() or (figures / "results.json").is_file():
            raise ConfigError(f"{flag} {out}: its figures folder is a run directory; give the site a directory of its own")
        if not (out / "leaderboard.json").is_file():
            raise ConfigError(f"{flag} {out}: holds a figures folder but no leaderboard.json, so odiag did not write it "
                              "(a build replaces its figures); move it, or choose a new directory or one odiag wrote")
    check_writable(out, flag)  # last: a refusal above leaves even the folder's time stamp as it was


def _check_ours(out: Path, flag: str) -> None:
    """Refuse a folder whose page or data another tool wrote."""
    from harness.config import ConfigError
    from harness.leaderboard.merge import SCHEMA_VERSION
    from harness.safeio import read_json

    try:
        ours = read_json(out / "leaderboard.json", 1 << 28).get("schema_version", "").startswith("odiag.leaderboard/")
    except (ConfigError, OSError, AttributeError):
        ours = False
    if not ours:
        held = "an index.html" if (out / "index.html").exists() else "a leaderboard.json"
        raise ConfigError(f"{flag} {out}: holds {held} that is not an odiag leaderboard's (no leaderboard.json with "
                          f"schema_version {SCHEMA_VERSION!r}); choose a new directory, or one odiag wrote")


def check_writable(out: Path, flag: str) -> None:
    """Refuse (one line) a site that cannot be written: ``out`` itself, or the folder it would be made in."""
    from harness.config import ConfigError

    where = out.absolute()
    while not where.exists() and where != where.parent:
        where = where.parent
    if not where.is_dir():
        raise ConfigError(f"{flag} {out}: lies under {where}, which is not a directory; choose another directory")
    try:  # a file made and removed at once: what the build will do, asked of the file system itself
        fd, probe = tempfile.mkstemp(dir=where, prefix=".odiag-site.", suffix=".tmp")
    except OSError as exc:
        raise ConfigError(f"{flag} {out}: cannot write in {where} ({exc.strerror or exc}); choose a directory you can write") from None
    os.close(fd)
    os.unlink(probe)


def build(run_dirs: Sequence[str | Path], out: str | Path, viewer_mb: float | None = None) -> dict:
    """Merge ``run_dirs`` and write the leaderboard site into ``out``; return the leaderboard JSON.

    ``viewer_mb`` bounds the per-token viewer's data in the page (default ``VIEWER_BUDGET_MB``).
    """
    from harness.leaderboard.merge import load_runs, merge
    from harness.results import json_ready
    from harness.rundir import RunLock, make_dirs

    out = Path(out)
    runs = load_runs(run_dirs)  # first: refusing runs that cannot be ranked together leaves the site untouched
    check_site_dir(out)
    board = json_ready(merge(runs))
    make_dirs(out)
    lock = RunLock(out, SITE_LOCK)  # one build at a time: another's leftovers are removed below, its figures swapped
    lock.acquire()
    try:
        _write_site(out, board, runs, viewer_mb)
    finally:
        lock.release()
    log.debug("leaderboard: %d runs, %d entries -> %s", len(runs), len(board["entries"]), out)
    return board


SITE_LOCK = ".odiag-site.lock"


def _write_site(out: Path, board: dict, runs, viewer_mb: float | None) -> None:
    from harness.leaderboard.figures import MISSING_GLYPHS, write_figures, write_validation_figures
    from harness.leaderboard.site import VIEWER_BUDGET_MB, render
    from harness.rundir import move_into_place, signals_held, staged

    _drop_leftovers(out)
    # everything the page shows is written beside it first (the figures into a staging folder, the page and its
    # JSON under temporary names), then moved into place by renames, which need no space: a build stopped while
    # drawing (the slow part) or refused a write (a full disk) leaves the previous page whole, figures included
    staging = Path(tempfile.mkdtemp(prefix=".figures.", suffix=".tmp", dir=out))
    page: dict[str, Path] = {}
    MISSING_GLYPHS.clear()  # said once per build
    try:
        figures = write_figures(board, runs, staging)
        validations = write_validation_figures(runs, staging)  # `odiag validate` panels, where a run has one
        html = render(board, runs, figures, VIEWER_BUDGET_MB if viewer_mb is None else viewer_mb, validations)
        # a page in valid UTF-8: a run directory's name that was not (bytes as the file system gave them) shows
        # those bytes escaped (bad\xffrun)
        html = html.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        text = json.dumps(board, indent=2, allow_nan=False) + "\n"
        for name, content in (("leaderboard.json", text), ("index.html", html)):
            # a published page: readable by the web server, not only its writer
            page[name] = staged(out / name, lambda f, content=content: f.write(content), mode="w", file_mode=0o644)
        # the renames of the figures, the data and the page: a Ctrl-C or SIGTERM meanwhile waits for the last one,
        # so the site is the old one or the new one whole (a kill -9 between them is put right by the next build)
        with signals_held():
            if (out / "leaderboard.json").is_file():
                _swap_figures(staging, out / "figures")
                move_into_place({out / name: tmp for name, tmp in page.items()})
            else:  # a first build: its page first, so that one killed between leaves a folder that reads as odiag's
                move_into_place({out / name: tmp for name, tmp in page.items()})
                _swap_figures(staging, out / "figures")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        for tmp in page.values():
            tmp.unlink(missing_ok=True)


_LEFTOVER = re.compile(r"^\.(figures\..+\.tmp|figures\.old\.\d+|leaderboard\.json\..+\.tmp|index\.html\..+\.tmp|odiag-site\..+\.tmp)$")


def _drop_leftovers(out: Path) -> None:
    """Remove what a build killed part-way left in ``out`` (staged figures, the figures it was replacing,
    half-written files): only names a build makes, once `_recover_figures` has put back what is not its own.
    One build at a time writes a site."""
    _recover_figures(out)
    for p in out.iterdir():
        if not _LEFTOVER.match(p.name) or p.is_symlink():
            continue
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def _drawn(path: Path) -> bool:
    """A file odiag draws into ``figures/`` (SVG, PNG); any other there is kept across builds."""
    return path.suffix in (".svg", ".png")

def _recover_figures(out: Path) -> None:
    """After a build stopped while it swapped ``figures/``: the figures it was replacing back where none are (the
    page there is the one they were drawn for), and files odiag did not draw, moved along into a staging folder,
    back into ``figures/``."""
    figures = out / "figures"
    leftovers = sorted(p for p in out.iterdir() if _LEFTOVER.match(p.name) and p.is_dir() and not p.is_symlink())
    if not figures.exists() and (old := next((p for p in leftovers if p.name.startswith(".figures.old.")), None)):
        old.rename(figures)
        leftovers.remove(old)
    if not figures.is_dir() or figures.is_symlink():
        return
    for staged_dir in leftovers:
        for kept in staged_dir.iterdir():
            if not _drawn(kept) and not (figures / kept.name).exists():
                kept.rename(figures / kept.name)


def _swap_figures(staging: Path, figures: Path) -> None:
    """Put the staged figures in place of ``figures`` by two renames; files there that odiag did not draw
    (anything but SVG and PNG) move along. Stopped part-way, it puts back what it moved."""
    from harness.rundir import DIR_MODE

    os.chmod(staging, DIR_MODE)
    if not figures.is_dir():
        staging.rename(figures)
        return
    old = figures.with_name(f".{figures.name}.old.{os.getpid()}")
    try:
        for kept in figures.iterdir():
            if not _drawn(kept) and not (staging / kept.name).exists():
                kept.rename(staging / kept.name)
        figures.rename(old)
        staging.rename(figures)
    except BaseException:
        _recover_figures(figures.parent)
        raise
    shutil.rmtree(old, ignore_errors=True)


def main_leaderboard(run_dirs: list[str], out: str, viewer_mb: float | None = None) -> int:
    """``odiag leaderboard RUN_DIR... --out DIR [--viewer-mb MB]``: print where the page is; 0 on success."""
    board = build(run_dirs, out, viewer_mb)
    groups = ", ".join(f"{g['task']} / {g['student']}" for g in board["groups"])
    runs, entries = len(board["runs"]), len(board["entries"])
    print(f"{runs} {plural(runs, 'run')}, {entries} {plural(entries, 'entry', 'entries')} ({groups})")
    print(f"page: {Path(out) / 'index.html'}")
    return 0


def main_model_card(run_dir: str, out: str | None = None, model_name: str | None = None) -> int:
    """``odiag model-card RUN_DIR [--out FILE] [--model-name NAME]``: a run's headline numbers as
    model-index YAML, the model named ``model_name`` (default: `modelcard.card_name` of the student)."""
    from harness.leaderboard.modelcard import model_card_yaml

    from harness.config import ConfigError

    if model_name is not None:
        model_name = model_name.strip()
        if not model_name:
            raise ConfigError("--model-name: empty; give the model's name on the Hub, e.g. my-org/my-student")
    text = model_card_yaml(run_dir, model_name)
    if out is None or out == "-":
        try:
            sys.stdout.write(text)
            sys.stdout.flush()
        except BrokenPipeError:
            raise
        except OSError as exc:  # a full disk behind `> FILE`: the card's destination, not the run, failed
            raise ConfigError(f"standard output: cannot write the model card ({exc.strerror or exc})") from None
        return 0
    from harness.rundir import atomic_write, run_holding

    target = Path(out)
    if target.is_dir():
        raise ConfigError(f"--out {out}: is a directory; give a file, e.g. {target / 'model-index.yaml'}")
    if (run := run_holding(target) or run_holding(target.resolve())) is not None:  # a link into a run, too
        raise ConfigError(f"--out {out}: lies in the run directory {run}, whose files a card must not replace; "
                          "write it outside the run directory")
    if not target.parent.is_dir():  # a card goes where its folder already is
        what = ("is a file, not a folder; give a path in a folder" if target.parent.exists()
                else "does not exist; create it first, or give a path in an existing folder")
        raise ConfigError(f"--out {out}: {target.parent} {what}")
    if target.is_symlink() or (target.exists() and not target.is_file()):
        target.write_text(text, encoding="utf-8", errors="surrogateescape")  # a link, a device or a pipe (/dev/stdout) is written through, never replaced
    else:
        kept = target.stat().st_mode & 0o7777 if target.exists() else None
        atomic_write(target, lambda f: f.write(text), mode="w")  # a file: whole, or not at all
        if kept is not None:
            target.chmod(kept)  # a file replaced keeps who may read it
    return 0
