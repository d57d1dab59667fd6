"""The run directory: resolved config, teacher identities, durable shards, records and results (SPEC §6).

What it guarantees (README "The run directory"):

- **One writer.** :meth:`RunDir.open` takes an exclusive lock (``flock`` on ``DIR/.odiag.lock``)
  held until the run ends; a second process is refused with one line naming the holder's pid, host
  and start time. A killed holder releases it (the kernel drops the lock with the process).
- **Whole files.** Every file is written whole or not at all (a temporary file in the same folder,
  fsync, rename; the many shards of one phase all written first, then synced and renamed); temporary
  files a killed run left behind are removed when the directory is opened.
  Files are created ``0o664`` and folders ``0o775`` whatever the umask, so a group can read a run.
- **Checked shards.** Every shard carries its kind, its place (the run's id, its question, its name and, for a
  teacher's pass, that teacher's identity) and a sha256 of both and its arrays; an empty, truncated, garbage or
  altered shard, or one copied from another run, question, name or teacher file, is named in a one-line error,
  and ``odiag run --repair`` drops it and recomputes it (every draw is seeded from ids, so the recomputed shard
  is the one that was lost).
- **Identity by content.** ``config.json`` holds the config, the hash of what shapes the rollout
  tree, and every teacher by name, resolved file and content identity (:mod:`harness.plan`). A config
  whose tree differs, a teacher file edited under its name, or a different teacher under a taken
  name is refused before anything is written.
- **Growth.** ``limit`` and ``budget`` are outside the tree's hash and never shrink: a run grows to
  more questions (finished ones are reused) or a larger budget (allocation continues where it
  stopped); scoring settings (``algorithms``, ``jsd_beta``, ``gamma``) change only through
  ``odiag rescore``.

Layout::

    DIR/.odiag.lock             present while a process holds the run (pid, host, start time)
    DIR/config.yaml             the resolved run config (human-readable)
    DIR/config.json             the same, with its hashes and the teachers' identities
    DIR/shards/<question>/...   initial rollouts, teacher passes, targeted-rollout rounds (.npz)
    DIR/artefacts/...           solutions and summaries some teachers' contexts show
    DIR/nodes.parquet           one row per decision point x teacher x algorithm
    DIR/children.parquet        one row per decision point x teacher x child in A(s) (for the viewer)
    DIR/paths.parquet           one row per representative path (tokens, their text, outcome)
    DIR/results.json            the aggregates (SPEC §6 contract)
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import signal
import socket
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import yaml

from harness.backends.base import ScoreResult
from harness.config import ConfigError, RunConfig, build, local_path, portable
from harness.wording import finish_command, shell_word

if TYPE_CHECKING:
    from harness.backends import ModelSpec
    from harness.plan import RunPlan, TeacherRef

log = logging.getLogger(__name__)

FORMAT = "odiag.rundir/4"  # 3: shards bound to their place (a run id in config.json); 4: a teacher's passes to its identity
FILE_MODE, DIR_MODE = 0o664, 0o775
LOCK_NAME = ".odiag.lock"
# present while odiag run draws the tree (from its first rollout to its last): a run stopped then has an
# incomplete tree, which rescore and add-teacher must not take for the stopped rescore or add they finish
DRAWING = ".drawing"
# the teachers a rescore --drop-teacher removes, until a command finishes the run: the same command, run
# again after a stop, may name teachers the record no longer holds (and only those)
DROPPED = ".dropped"
_MARKERS = (LOCK_NAME, DRAWING, DROPPED)
_TMP = re.compile(r"^\..+\.[A-Za-z0-9_]+\.tmp$")


def check_not_a_file(root: Path, flag: str) -> None:
    """Refuse a run directory ``root`` that exists as something else (``flag``: how the user gave it)."""
    if root.exists() and not root.is_dir():
        raise RunDirError(f"{flag} {root}: exists and is not a directory")
    above = next((p for p in root.absolute().parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise RunDirError(f"{flag} {root}: lies under {above}, which is not a directory")


def another(flag: str) -> str:
    """The fix a refusal of a run directory suggests, under the option or key the user gave it as:
    ``--out`` gives "another --out", lm-eval's "task T: --metadata key 'out'" gives "another --metadata key 'out'"."""
    return f"another {flag.rpartition(': ')[2]}"


def run_holding(path: str | Path) -> Path | None:
    """The run directory ``path`` is, or lies in (the nearest folder holding a run's ``config.json`` or
    ``results.json``); None when it is in none. Pages and cards are never written into a run's files."""
    for here in dict.fromkeys((Path(os.path.abspath(path)), Path(path).resolve())):  # as named, and through its links
        for folder in (here, *here.parents):
            if (folder / "config.json").is_file() or (folder / "results.json").is_file():
                return folder
    return None


class RunDirError(ConfigError):
    """A run directory that cannot be used as asked: locked, unwritable, corrupt or of another run."""


class ShardError(RunDirError):
    """A shard that cannot be read back: named, with the way to recompute it."""


class RunLocked(RunDirError):
    """Another process holds the run directory."""


# files -------------------------------------------------------------------------------------------


_NOT_YOURS = "make its folder writable for you (chmod u+w) or name a folder you can write"
_WRITE_FIXES = {  # what to do about a failed write, by its errno (the command again resumes: nothing is half-written)
    errno.EACCES: _NOT_YOURS,
    errno.EPERM: _NOT_YOURS,
    errno.EROFS: "a read-only file system: name a folder on a writable one",
    errno.ENOSPC: "free some space and give the same command again",
    errno.EDQUOT: "free some of your quota and give the same command again",
}


def _oserror(path: Path, exc: OSError) -> RunDirError:
    fix = _WRITE_FIXES.get(exc.errno)
    return RunDirError(f"{path}: cannot write ({exc.strerror or exc})" + (f"; {fix}" if fix else ""))


def remove_temporaries(root: Path) -> None:
    """Remove the temporary files (``.NAME.*.tmp``) a killed command left under ``root`` (only while holding its
    lock: then no other command is writing them)."""
    for p in root.rglob("*.tmp"):
        if _TMP.match(p.name):
            p.unlink(missing_ok=True)


def make_dirs(path: Path) -> None:
    """``mkdir -p`` with every folder it creates made ``0o775`` (umask-independent)."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(exist_ok=True)
            os.chmod(d, DIR_MODE)
        except OSError as exc:
            raise _oserror(d, exc) from None
    if not path.is_dir():
        raise RunDirError(f"{path}: exists and is not a directory")


def atomic_write(path: Path, write: Callable[[object], None], mode: str = "wb") -> None:
    """Write ``path`` through ``write(fileobj)`` so that it appears complete or not at all (mode 0o664)."""
    tmp = staged(path, write, mode)
    try:
        move_into_place({path: tmp})
    finally:
        tmp.unlink(missing_ok=True)  # gone once in place; left only by a refused rename


def staged(path: Path, write: Callable[[object], None], mode: str = "wb", file_mode: int = FILE_MODE,
           sync: bool = True) -> Path:
    """A complete, synced copy of what ``path`` is to hold, under a hidden temporary name beside it
    (``.NAME.*.tmp``), for the caller to move into place with ``os.replace``; ``sync=False`` leaves the
    sync to the caller (`RunDir.save_all`: every file written before any is synced)."""
    make_dirs(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{os.fsdecode(os.fsencode(path.name)[:200])}.", suffix=".tmp")
    except OSError as exc:
        raise _oserror(path, exc) from None
    try:
        os.fchmod(fd, file_mode)
        # text in UTF-8 whatever the locale; a file name's bytes that were not UTF-8 written as they came
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8", "errors": "surrogateescape"})) as f:
            write(f)
            f.flush()
            if sync:
                os.fsync(f.fileno())
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise _oserror(path, exc) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


@contextlib.contextmanager
def signals_held():
    """Ctrl-C and SIGTERM held back while the block runs, then delivered to the handlers they had: the few
    renames of one change (a site's figures, its data and its page) are made all or none by such a stop.
    Only the main thread sets handlers; elsewhere the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():  # None: a handler set outside Python, which it cannot put back
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
        if caught:
            signal.raise_signal(caught[0])


def move_into_place(files: Mapping[Path, Path]) -> None:
    """Each staged file (final path: temporary one, from :func:`staged`) renamed into place, in order, then its
    folder synced: renames need no space, so what was written whole appears whole. A refused rename (something
    else at the name) is one line naming the file."""
    renamed = []
    try:
        for final, tmp in files.items():
            try:
                os.replace(tmp, final)
            except OSError as exc:
                raise _oserror(final, exc) from None
            renamed.append(final)
    finally:  # the renames made, durable even when a later one is refused
        for folder in dict.fromkeys(final.parent for final in renamed):
            sync_dir(folder)


def fsync_file(path: Path, named: Path) -> None:
    """Make a written file's bytes durable; an error names ``named`` (the file it is to become)."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise _oserror(named, exc) from None


def sync_dir(path: Path) -> None:
    """Make the renames in directory ``path`` durable."""
    dir_fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_json(path: Path, obj: object) -> None:
    text = json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n"
    atomic_write(path, lambda f: f.write(text), mode="w")


def read_json(path: Path, what: str) -> object:
    """A JSON file, or a one-line RunDirError naming it (missing, unreadable, not JSON)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunDirError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise RunDirError(f"{path}: not a valid {what} ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})") from None


def ragged(arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(flat, offsets) of a list of 1-D int arrays."""
    offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
    np.cumsum([len(a) for a in arrays], out=offsets[1:])
    flat = np.concatenate(arrays).astype(np.int64) if arrays else np.zeros(0, np.int64)
    return flat, offsets


def unragged(flat: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
    return [flat[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]


# shards ------------------------------------------------------------------------------------------

# every kind of shard and the arrays it must hold (a shard may hold more)
SHARD_KINDS: dict[str, tuple[str, ...]] = {
    "initial": ("tokens", "offsets", "outcome"),
    "score": ("ids", "offsets", "logprobs", "context", "approximate"),
    "skip": ("skip",),
    "round": ("forced_len", "target_path", "forced_token", "reward", "truncated", "length", "exit_lcp", "exit_token", "window"),
}
_ROUND = re.compile(r"^window(\d+)-round(\d+)$")
_PASS = re.compile(r"^(?:score|fill)-p\d+-(.+)$")  # a pass over a path: its model (a teacher's name, or the student)


def shard_kinds(name: str) -> tuple[str, ...]:
    """The kinds a shard called ``name`` may be: ``initial``, ``score``/``skip``, ``score`` (a fill) or ``round``."""
    if name == "initial":
        return ("initial",)
    if name.startswith("score-"):
        return ("score", "skip")
    if name.startswith("fill-"):
        return ("score",)
    if _ROUND.match(name):
        return ("round",)
    raise ValueError(f"unknown shard name {name!r}")


def score_arrays(res: ScoreResult, context: np.ndarray) -> dict[str, np.ndarray]:
    """A teacher's (or the student's) pass over a path as the arrays of a ``score`` shard."""
    out = {"ids": res.ids, "offsets": res.offsets, "logprobs": res.logprobs, "context": np.asarray(context)}
    out["approximate"] = np.array(res.approximate)
    if res.reference_logprobs is not None:
        out["reference_logprobs"] = res.reference_logprobs
    for k, v in (res.divergences or {}).items():
        out[f"div_{k}"] = v
    return out


def score_result(a: dict[str, np.ndarray]) -> ScoreResult:
    """A ``score`` shard's arrays back as the pass they store."""
    divs = {k[4:]: v for k, v in a.items() if k.startswith("div_")}
    return ScoreResult(
        ids=a["ids"], offsets=a["offsets"], logprobs=a["logprobs"],
        reference_logprobs=a.get("reference_logprobs"), divergences=divs or None,
        approximate=bool(a["approximate"]),
    )


# the forward passes a run holds in memory at most; the others are read back from their shards when asked for.
# Far above a small run's passes (the demo's: 31 MiB); a long-trace run holds about this much instead of every
# pass of every question (AIME 2025 with eight teachers: up to 59 GiB)
HELD_PASS_BYTES = 1 << 31


class PassCache:
    """The ``score`` and ``fill`` shards of a run as passes, at most `HELD_PASS_BYTES` of them held.

    The first passes that fit stay; the others are read back each time a phase asks for them. Every phase reads
    the passes in the same order, question by question, and under that order a cache that let the least recently
    used go would never hold the pass asked for next: it would read back every pass once it held too few."""

    def __init__(self, rundir: RunDir):
        self._rundir = rundir
        self._held: dict[tuple[str, str], ScoreResult] = {}
        self._bytes = 0
        self.reads = 0  # passes read back, not held

    def reader(self, question: str) -> Callable[[str], ScoreResult]:
        return lambda name: self.get(question, name)

    def get(self, question: str, name: str) -> ScoreResult:
        if (res := self._held.get((question, name))) is not None:
            return res
        shard = self._rundir.load_again(question, name)
        self.reads += 1
        res = score_result(shard)
        self.put(question, name, res)
        return res

    def put(self, question: str, name: str, res: ScoreResult) -> None:
        """A pass just scored (and stored) or read: held if there is room (a fill scored again replaces its own)."""
        key = (question, name)
        if (old := self._held.pop(key, None)) is not None:
            self._bytes -= _nbytes(old)
        if self._bytes + _nbytes(res) <= HELD_PASS_BYTES:
            self._held[key] = res
            self._bytes += _nbytes(res)


def _nbytes(res: ScoreResult) -> int:
    arrays = (res.ids, res.offsets, res.logprobs, res.reference_logprobs, *(res.divergences or {}).values())
    return sum(a.nbytes for a in arrays if a is not None)


def checksum(arrays: dict[str, np.ndarray], place: str) -> str:
    """sha256 over a shard's place and every array's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256(f"{place}|".encode())
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        h.update(f"{k}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


# the lock ----------------------------------------------------------------------------------------


class RunLock:
    """An exclusive ``flock`` on ``DIR/.odiag.lock``, with who holds it written inside."""

    def __init__(self, root: Path, name: str = LOCK_NAME):
        self.path = root / name
        self.fd: int | None = None

    def acquire(self) -> None:
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, FILE_MODE)
            except OSError as exc:
                raise _oserror(self.path, exc) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise _oserror(self.path, exc) from None
                raise RunLocked(f"{self.path.parent}: in use by {self.holder()}; wait for it to finish") from None
            try:  # the file may have been unlinked by the holder we waited on: lock the one at the path
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            info = {"pid": os.getpid(), "host": socket.gethostname(),
                    "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
            self.fd = fd
            try:
                os.fchmod(fd, FILE_MODE)
                os.ftruncate(fd, 0)
                os.write(fd, json.dumps(info).encode())
            except OSError as exc:  # a full disk: the command stops here, holding nothing and leaving no lock file
                self.release()
                raise _oserror(self.path, exc) from None
            return

    def held_by(self) -> str | None:
        """Who holds the lock now (:meth:`holder`), or None; the check takes no lock and writes nothing."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return self.holder()
        finally:
            os.close(fd)  # closing releases a lock this check took
        return None

    def holder(self) -> str:
        try:
            info = json.loads(self.path.read_text(encoding="utf-8"))
            return f"odiag pid {info['pid']} on {info['host']} since {info['started']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "another odiag process (just starting)"

    def release(self) -> None:
        if self.fd is None:
            return
        self.path.unlink(missing_ok=True)
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None


# the directory -----------------------------------------------------------------------------------

_VALIDATION_FILES = ("validation.json", "validation.svg", "validation.png")


def _drop_validation(root: Path) -> None:
    """Remove ``odiag validate``'s outputs: they measured the results whose settings are about to change.

    Its stored (arm, seed) results stay under ``DIR/validation/``: they are keyed by the results they
    trained on, so they are reused only if the run comes back to those settings.
    """
    if found := [name for name in _VALIDATION_FILES if (root / name).exists()]:
        for name in found:
            (root / name).unlink()
        log.info("%s: removed %s: it validated the run's earlier settings; run odiag validate %s again for these",
                 root, ", ".join(found), shell_word(root))


_RECORD_FILES = {"config.json", "config.yaml", LOCK_NAME}


def _sync_yaml(root: Path, config: dict) -> None:
    """``config.yaml`` rewritten from ``config.json``'s config when it says something else: a command
    stopped between the two writes, so that ``odiag run --config DIR/config.yaml`` reads what the run records."""
    path = root / "config.yaml"
    try:
        same = path.is_file() and yaml.safe_load(path.read_text(encoding="utf-8")) == config
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        same = False
    if not same:
        atomic_write(path, lambda f: yaml.safe_dump(config, f, sort_keys=False), "w")
        log.info("%s: config.yaml rewritten from config.json, the settings the run records", root)


def same_settings(saved: dict, record: dict) -> bool:
    """Two records of a run's ``config.json`` that say the same: paths inside the checkout spelled either way,
    and a record written before runs recorded their task (taken as it is now: nothing older recorded it)."""
    a, b = portable(saved), portable(record)
    if "task" not in a:
        b = {k: v for k, v in b.items() if k != "task"}
    return a == b


def _keep(root: Path, into: dict[str, Path | bytes], names: Iterable[str], removed: Iterable[str] = (),
          tables: Iterable[str] = ()) -> None:
    """The files ``names`` (to be replaced), ``removed`` (to be removed) and ``tables`` of ``root`` as they are, for
    `RunDir.undo`, recorded in ``into`` one by one (a stop part-way puts back what was kept): each under a second
    name (``.NAME.before.tmp``), a hard link (no space, and the old file survives being replaced). Where the file
    system makes no hard link, a file to be removed is moved there instead, a file to be replaced is kept as its
    bytes, and a table is not kept (`RunDir.undo` then reads a run whose tables were rewritten as unfinished). A
    killed command's are removed as its temporary files are."""
    removed, tables = list(removed), list(tables)
    for name in [*names, *removed, *tables]:
        path = root / name
        if not path.is_file():
            continue
        link = path.with_name(f".{path.name}.before.tmp")
        link.unlink(missing_ok=True)
        try:
            os.link(path, link)
            into[name] = link
        except OSError:
            if name in removed:
                try:
                    os.replace(path, link)  # it goes now rather than a moment later: kept, and no space needed
                except OSError as exc:
                    raise _oserror(path, exc) from None
                into[name] = link
            elif name not in tables:
                into[name] = path.read_bytes()


def _set_aside_unrecorded(root: Path) -> bool:
    """Whether an ``add-teacher`` or a rescore of scoring settings was killed (no clean-up ran) after it set the
    finished run's results aside and before it recorded its own settings: the run as it was is whole in the
    files it kept (`_keep`), its record unchanged (the record it kept is the record now; where the file system
    made no link, the results name the recorded settings and teachers)."""
    kept = root / ".results.json.before.tmp"
    if (root / "results.json").exists() or not kept.is_file():
        return False
    try:
        record = (root / "config.json").read_bytes()
        if (root / ".config.json.before.tmp").is_file():
            return (root / ".config.json.before.tmp").read_bytes() == record
        results, saved = json.loads(kept.read_bytes()), json.loads(record)
        return (results["config_hash"] == saved["config_hash"]
                and set(results["teacher_info"]) == {t["name"] for t in saved["teachers"]})
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _restore_set_aside(root: Path) -> None:
    """The finished run's results and validation outputs back where such a killed command set them aside (the
    same command, run again, then finds the run finished, as it found it the first time)."""
    for name in ("results.json", *_VALIDATION_FILES):
        kept = root / f".{name}.before.tmp"
        if kept.is_file() and not (root / name).exists():
            os.replace(kept, root / name)
    sync_dir(root)


def _described(root: Path, specs: Mapping[str, ModelSpec]) -> dict | None:
    """The backend description in a run's ``results.json`` (None: no results, or none readable), without the
    models the run no longer reads (``specs`` are those it does: a teacher dropped since takes its own along)."""
    try:
        described = json.loads((root / "results.json").read_text(encoding="utf-8"))["versions"]["backend"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(described, dict):
        return None
    # results.json writes a path inside the checkout relative to it (`portable`): compared both ways
    names = {*specs, *map(portable, specs)}
    ids = {*(spec.id for spec in specs.values()), *(portable(spec.id) for spec in specs.values())}
    if isinstance(described.get("models"), dict):
        described["models"] = {k: v for k, v in described["models"].items() if k in names}
    if isinstance(described.get("engines"), dict):  # vLLM's, by model id
        described["engines"] = {k: v for k, v in described["engines"].items() if k in ids}
    return described


def _only(specs: Mapping[str, ModelSpec], records: Mapping[str, dict]) -> dict[str, dict]:
    """``config.json``'s model records of the models ``specs`` reads (records are by portable id)."""
    ids = {portable(spec.id) for spec in specs.values()}
    return {key: record for key, record in records.items() if key in ids} if isinstance(records, dict) else records


def _tables(root: Path) -> list[str]:
    """The tables a finished run's ``results.json`` lists (none where it cannot be read)."""
    try:
        tables = json.loads((root / "results.json").read_text(encoding="utf-8")).get("tables")
    except (OSError, ValueError, AttributeError):
        return []
    return [t for t in tables if isinstance(t, str)] if isinstance(tables, dict) else []


def _holds_work(root: Path) -> bool:
    """Whether a run directory holds anything computed: a shard, a table, results, a teacher's context."""
    for p in root.rglob("*"):
        if p.is_dir() or _TMP.match(p.name) or (p.parent == root and p.name in (*_RECORD_FILES, *_MARKERS)):
            continue
        return True
    return False


class RunDir:
    """A run directory held by this process for one :class:`~harness.plan.RunPlan`."""

    def __init__(
        self, root: Path, plan: RunPlan, lock: RunLock | None = None, repair: bool = False, models_checked: bool = True,
    ):
        self.root, self.plan, self.lock, self.repair = root, plan, lock, repair
        self.models_checked = models_checked  # False: a rescore that redoes no pass, its models not checked against the run's
        self.repaired: list[str] = []
        self._run_id: str | None = None
        self._identities: dict[str, str] | None = None  # {teacher name as in shard names: identity}
        # the backend description of the run's last results, read when it was opened (before a rescore or an add
        # set them aside or removed them): what a command that loads no model reports
        self.last_backend: dict | None = None
        # add-teacher, rescore: the finished run's record, results and validation, each kept as a hard link (a name
        # for the old file, no space) or, on a file system without links, its bytes (`_keep`)
        self.before: dict[str, Path | bytes] = {}

    @property
    def config(self) -> RunConfig:
        return self.plan.config

    @property
    def run_id(self) -> str:
        """The id ``config.json`` gave this run when it was made: every shard it writes is bound to it."""
        if self._run_id is None:
            self._run_id = str(RunDir.read_saved(self.root)["run"])
        return self._run_id

    @property
    def identities(self) -> dict[str, str]:
        """{a teacher's name as shard names spell it: its identity} as ``config.json`` records them: a teacher's
        passes are bound to the file they were made with (two copies of a run may each add their own)."""
        if self._identities is None:
            self._identities = _identities(RunDir.read_saved(self.root)["teachers"])
        return self._identities

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for kept in self.before.values():  # the command finished, or put them back
            if isinstance(kept, Path):
                kept.unlink(missing_ok=True)
        if self.lock is not None:
            self.lock.release()

    @staticmethod
    def open(
        root: str | Path, plan: RunPlan, *, repair: bool = False, rescore: bool = False, add: TeacherRef | None = None,
        drop: tuple[str, ...] = (), flag: str = "--out", prepared_from: bytes | None = None,
    ) -> RunDir:
        """Create ``root`` for a checked ``plan``, or reopen it; hold it until :meth:`close`.

        ``prepared_from``: the ``config.json`` a command that reads its settings from the run (``add-teacher``,
        ``rescore``) was planned from; a run another command changed in the meantime is refused, as the plan
        would put back the settings that command recorded.

        Refused, with nothing written, when another process holds it, when it holds a run whose tree
        differs, when a teacher's file changed under its name (``rescore`` rescores teachers that do
        not plan the tree), or when ``add`` is a different teacher under a taken name. Teachers added
        earlier are loaded from their stored files and checked against the task before anything is
        written; the returned directory's ``plan`` includes them. ``flag`` names ``root`` in a refusal
        (the option or key the user gave it as).
        """
        root = Path(root)
        if root.is_symlink() and not root.exists():
            raise RunDirError(f"{flag} {root}: a link to {os.readlink(root)!r}, which does not exist; remove the link or "
                              "create the directory it names")
        check_not_a_file(root, flag)
        if root.is_dir() and not (root / "config.json").exists():
            # beside .drawing, a config.yaml is the one a new run wrote before its config.json could be (a full disk)
            ours = {*_MARKERS, *(("config.yaml",) if (root / DRAWING).is_file() else ())}
            foreign = [p.name for p in root.iterdir() if p.name not in ours and not _TMP.match(p.name)]
            if foreign:
                raise RunDirError(
                    f"{flag} {root}: a directory that is not an odiag run (holds {sorted(foreign)[0]!r}); "
                    "choose a new or empty directory"
                )
        make_dirs(root)
        lock = RunLock(root)
        lock.acquire()
        rundir: RunDir | None = None
        try:
            if _set_aside_unrecorded(root):  # held now: no command that set them aside is still running
                _restore_set_aside(root)
            if prepared_from is not None and RunDir.record_bytes(root) != prepared_from:
                raise RunDirError(f"{root}: another odiag command changed the run while this one prepared; "
                                  "give this command again")
            saved = RunDir.read_saved(root, flag) if (root / "config.json").exists() else None
            if saved is not None:
                _sync_yaml(root, saved["config"])
            if saved is not None and not rescore and add is None and not _holds_work(root):
                saved = None  # stopped before anything was computed: nothing pins its settings, the new ones apply
            from harness.plan import check_against

            plan, changed = check_against(plan, saved, rescore=rescore, add=add, root=str(root), drop=drop, flag=flag)
            # a rescore of a finished run that redoes no forward pass reads only stored work: its models may have
            # moved on (a stopped one may still make fill passes: its models are checked)
            from harness.plan import model_specs

            specs = model_specs(plan.config, plan.specs)
            # the models the run reads now: a dropped teacher's model leaves the record with it, as in a run that
            # never had it (its files may change, or go, without concerning this run)
            stored = _only(specs, (saved or {}).get("models", {}))
            checked = not (rescore and not changed and (root / "results.json").is_file())
            if checked:
                stored = model_records(specs.values(), stored, str(root), flag)
            rundir = RunDir(root, plan, lock, repair, models_checked=checked)
            rundir.last_backend = _described(root, specs)
            rundir.clean()
            if drop:
                pending = sorted({*RunDir.pending_drop(root), *drop})
                atomic_write(root / DROPPED, lambda f: f.write(json.dumps(pending).encode()))
            for name in (*changed, *drop):  # rescore: a teacher's file changed (passes redone) or it leaves the run
                rundir.drop_teacher(name)
            # a new run gets an id; a run keeps its id whatever its settings become (its shards are bound to it)
            record = plan.record() | {"run": (saved or {}).get("run") or uuid.uuid4().hex[:16], "models": stored}
            rundir._run_id, rundir._identities = record["run"], _identities(record["teachers"])
            # what an expected failure puts back: a finished run before an add or a rescore of scoring settings (a
            # drop, or a teacher whose file changed, stays recorded: the old file may be gone, and odiag run, with
            # --repair, must go on without it)
            resets = saved != record and not (saved is not None and same_settings(saved, record))
            if (add is not None or (rescore and not drop and not changed)) and saved != record:
                outputs = ["results.json", *_VALIDATION_FILES]  # removed here, or rewritten by the command
                _keep(root, rundir.before, ["config.json", "config.yaml", *([] if resets else outputs)],
                      removed=outputs if resets else [], tables=_tables(root))
            if saved != record and not resets:  # recorded before a run recorded its task, or a path spelled
                write_json(root / "config.json", record)  # from elsewhere: nothing of the run changes
            elif saved != record:
                if not rescore and add is None:  # odiag run with new settings: a tree to draw, or to grow
                    atomic_write(root / DRAWING, lambda f: f.write(b""))
                # results of the settings recorded until now: gone before the record changes, so a command
                # stopped from here on leaves a run that reads as unfinished, never as finished with other settings
                (root / "results.json").unlink(missing_ok=True)
                _drop_validation(root)
                atomic_write(root / "config.yaml", lambda f: yaml.safe_dump(record["config"], f, sort_keys=False), "w")
                write_json(root / "config.json", record)
        except BaseException as exc:
            try:
                if rundir is not None and rundir.before:  # refused a write (a full disk): the finished run as it was
                    rundir.undo(cause=exc)
            finally:
                if rundir is not None:
                    rundir.close()
                else:
                    lock.release()
            raise
        return rundir

    @staticmethod
    def record_bytes(root: str | Path) -> bytes | None:
        """The bytes of ``config.json`` as they are now (None: none), to tell whether the run changed since."""
        try:
            return (Path(root) / "config.json").read_bytes()
        except OSError:
            return None

    @staticmethod
    def read_saved(root: str | Path, flag: str | None = None) -> dict:
        """``config.json`` of a run directory, checked for shape; a one-line error otherwise. ``flag``: the
        option that named the directory to a command that would write the run afresh (``--out``); None for a
        command that only reads or grows it (rescore, add-teacher, validate, plan)."""
        path = Path(root) / "config.json"
        if not path.exists():
            raise RunDirError(f"{root}: not an odiag run directory (no config.json)")
        afresh = another(flag) if flag else "odiag run and another --out"
        fix = f"the run cannot be read without it: restore it from a copy, or start afresh with {afresh}"
        try:
            saved = read_json(path, "run config")
        except RunDirError as exc:
            raise RunDirError(f"{exc}; {fix}") from None
        if not isinstance(saved, dict) or saved.get("format") != FORMAT:
            found = saved.get("format") if isinstance(saved, dict) else type(saved).__name__
            raise RunDirError(
                f"{path}: not a run config of this odiag (format {found!r}, expected {FORMAT!r}); "
                f"a run made by an older odiag cannot be {'resumed' if flag else 'read'}: "
                + (f"use {another(flag)}, or remove the directory to start afresh there" if flag
                   else f"run it afresh with {afresh}")
            )
        keys = ("config", "config_hash", "tree_hash", "teachers", "run")
        if missing := [k for k in keys if k not in saved]:
            raise RunDirError(f"{path}: not a valid run config (no {missing[0]!r}); {fix}")
        if not isinstance(saved["config"], dict) or not isinstance(saved["teachers"], list):
            raise RunDirError(f"{path}: not a valid run config ('config' or 'teachers' has the wrong type); {fix}")
        if not isinstance(saved["run"], str) or not saved["run"]:
            raise RunDirError(f"{path}: not a valid run config ('run' is not the run's id); {fix}")
        if not isinstance(saved.get("models", {}), dict):
            raise RunDirError(f"{path}: not a valid run config ('models' has the wrong type); {fix}")
        return saved

    @staticmethod
    def finished_results(root: str | Path) -> Path:
        """``results.json`` of a finished run directory; otherwise one line saying what ``root`` is instead."""
        root = Path(root)
        if not root.is_dir():
            raise RunDirError(f"{root}: {'not a directory' if root.exists() else 'no such directory'}; give a run directory "
                              "(the --out of odiag run or odiag demo)")
        if (root / "results.json").is_file():
            return root / "results.json"
        if not (root / "config.json").exists():
            raise RunDirError(f"{root}: not an odiag run directory (no config.json)")
        if holder := RunLock(root).held_by():  # a run, rescore or add-teacher under way there
            raise RunLocked(f"{root}: in use by {holder}; wait for it to finish")
        if _set_aside_unrecorded(root):
            raise RunDirError(f"{root}: an odiag add-teacher or rescore that was killed set the finished results aside "
                              "before it recorded its settings; give that command again, or "
                              f"{finish_command(root)}: either puts them back first")
        raise RunDirError(f"{root}: the run has not finished (no results.json); run the command that started it "
                          f"again to finish it, or {finish_command(root)} (its "
                          "recorded settings)")

    def fingerprints(self) -> dict[str, str]:
        """{model: the fingerprint of its files} of every local model ``config.json`` records."""
        stored = RunDir.read_saved(self.root).get("models")
        return {str(k): str(r["fingerprint"]) for k, r in (stored if isinstance(stored, dict) else {}).items()
                if isinstance(r, dict) and r.get("fingerprint")}

    @staticmethod
    def verify_models(root: str | Path) -> None:
        """Refuse (a RunDirError) when a model the run recorded has other files on this machine now."""
        from harness.backends import ModelSpec
        from harness.config import local_path

        stored = RunDir.read_saved(root).get("models", {})
        specs = [ModelSpec(local_path(key), record.get("revision")) for key, record in stored.items() if isinstance(record, dict)]
        model_records(specs, stored, str(root), flag=None)

    @staticmethod
    def load_config(root: str | Path) -> RunConfig:
        """The config a run directory was made with, its model and data paths opened from here."""
        path = Path(root) / "config.json"
        cfg = build(RunConfig, RunDir.read_saved(root)["config"], str(path))
        if cfg.backend == "synthetic":
            return cfg
        # a relative path in a run's record is one inside the checkout (harness.config.anchored wrote it so)
        return dataclasses.replace(cfg, student=local_path(cfg.student),
                                   data_files=None if cfg.data_files is None else local_path(cfg.data_files))

    @staticmethod
    def stored_teacher_files(root: str | Path) -> dict[str, str]:
        """{entry as the config names it: resolved file} of an existing run (empty if none or unreadable)."""
        try:
            saved = RunDir.read_saved(root)
        except ConfigError:
            return {}
        return {t.get("entry", ""): t.get("file", "") for t in saved["teachers"] if isinstance(t, dict)}

    def clean(self) -> None:
        """Remove temporary files a killed run left behind (only while holding the lock)."""
        remove_temporaries(self.root)

    # shards

    def shard(self, question: str, name: str) -> Path:
        return self.root / "shards" / question / f"{name}.npz"

    def load(self, question: str, name: str) -> dict[str, np.ndarray] | None:
        """A shard's arrays, or None when it was never completed (or, with ``repair``, was corrupt).

        A shard that cannot be read, is of the wrong kind, was written for another run, question or name, lacks an
        array or fails its checksum is a :class:`ShardError` naming it.
        """
        path = self.shard(question, name)
        if not path.exists():
            return None
        expected = self._place(question, name)  # read before the shard: a bad config.json is not a bad shard
        try:
            arrays = _read_npz(path)
            kind = str(arrays.pop("_kind", ""))
            stored = str(arrays.pop("_sha256", ""))
            place = str(arrays.pop("_place", ""))
            if kind not in shard_kinds(name):
                raise NotAsWritten(f"kind {kind!r}, expected {' or '.join(shard_kinds(name))}")
            if place != expected:
                raise NotAsWritten(_misplaced(place, expected, question, name))
            if missing := [k for k in SHARD_KINDS[kind] if k not in arrays]:
                raise NotAsWritten(f"no array {missing[0]!r}")
            if checksum(arrays, place) != stored:
                raise NotAsWritten("checksum mismatch: its arrays changed after it was written")
        except Exception as exc:  # noqa: BLE001 - whatever np.load raises on bad bytes, the shard is named
            why = "empty file" if path.stat().st_size == 0 else why_unreadable(exc)
            if not self.repair:
                raise ShardError(  # only run has --repair: rescore, add-teacher, validate and lm-eval finish through it
                    f"{path}: corrupt shard ({why}); drop and recompute it with {finish_command(self.root, '--repair')}"
                ) from None
            log.warning("%s: corrupt shard (%s): dropped, recomputing", path, why)
            path.unlink()
            self.repaired.append(str(path.relative_to(self.root)))
            return None
        return arrays

    def load_again(self, question: str, name: str) -> dict[str, np.ndarray]:
        """A shard this run stored or has read already, read again: gone or (with ``repair``) dropped as corrupt
        since, it is a :class:`RunDirError` naming it and the command that makes it again."""
        repaired = len(self.repaired)
        if (shard := self.load(question, name)) is not None:
            return shard
        what = "corrupt when read back, and dropped (--repair)" if len(self.repaired) > repaired else "removed while the run read it"
        raise RunDirError(f"{self.shard(question, name)}: {what}; {finish_command(self.root)} makes it again")

    def save(self, question: str, name: str, **arrays: np.ndarray) -> None:
        """Write a shard with its kind and checksum."""
        payload = self._payload(question, name, arrays)
        atomic_write(self.shard(question, name), lambda f: np.savez(f, **payload))

    def save_all(self, shards: Iterable[tuple[str, str, dict[str, np.ndarray]]]) -> None:
        """Write many shards ((question, name, arrays) each), each whole or not at all: all written first, then
        each synced (the kernel writes them back together) and moved into place, each folder synced once. A
        file and its folder synced one shard at a time took most of the time of thousands of passes."""
        files: dict[Path, Path] = {}
        try:
            for question, name, arrays in shards:
                payload = self._payload(question, name, arrays)
                path = self.shard(question, name)
                if path in files:
                    raise ValueError(f"shard {name!r} of {question!r} given twice in one batch")
                files[path] = staged(path, lambda f: np.savez(f, **payload), sync=False)
            for final, tmp in files.items():
                fsync_file(tmp, final)
            move_into_place(files)
        finally:
            for tmp in files.values():
                tmp.unlink(missing_ok=True)  # gone once in place

    def _place(self, question: str, name: str) -> str:
        """Where a shard belongs: this run, its question, its name and, for a teacher's pass, that teacher's
        identity (a shard elsewhere, or of another file under the same name, is not this run's work)."""
        place = f"{self.run_id}/{question}/{name}"
        teacher = _PASS.match(name)
        identity = self.identities.get(teacher[1]) if teacher else None
        return f"{place}#{identity}" if identity else place

    def _payload(self, question: str, name: str, arrays: dict) -> dict[str, np.ndarray]:
        arrays = {k: np.asarray(v) for k, v in arrays.items()}
        kinds = shard_kinds(name)
        kind = "skip" if "skip" in arrays else kinds[0]
        if missing := [k for k in SHARD_KINDS[kind] if k not in arrays]:
            raise ValueError(f"shard {name!r} of kind {kind!r} lacks {missing}")
        place = self._place(question, name)
        return {**arrays, "_kind": np.array(kind), "_place": np.array(place), "_sha256": np.array(checksum(arrays, place))}

    def rounds(self, question: str) -> list[tuple[int, int]]:
        """(window, round) of every stored targeted-rollout shard of a question, in order."""
        found = []
        for p in (self.root / "shards" / question).glob("window*-round*.npz"):
            if m := _ROUND.match(p.stem):
                found.append((int(m[1]), int(m[2])))
        return sorted(found)

    def drop_rounds_from(self, question: str, window: int, round_: int) -> int:
        """Remove the question's round shards at or after (window, round): their plan no longer holds."""
        dropped = [wr for wr in self.rounds(question) if wr >= (window, round_)]
        for w, r in dropped:
            self.shard(question, f"window{w}-round{r}").unlink(missing_ok=True)
        return len(dropped)

    @staticmethod
    def pending_drop(root: str | Path) -> list[str]:
        """The teachers a stopped ``rescore --drop-teacher`` removed (``DROPPED``); empty when none."""
        try:
            names = json.loads((Path(root) / DROPPED).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return []
        return [n for n in names if isinstance(n, str)] if isinstance(names, list) else []

    @staticmethod
    def set_aside_unrecorded(root: str | Path) -> bool:
        """Whether the run is finished but for the results a killed ``add-teacher`` or rescore set aside before it
        recorded its settings (the next command to open it puts them back)."""
        return _set_aside_unrecorded(Path(root))

    @staticmethod
    def stopped_drawing(root: str | Path) -> bool:
        """Whether ``odiag run`` stopped while it drew the run's tree (rescore and add-teacher need it whole)."""
        return (Path(root) / DRAWING).exists()

    def undo(self, added: str | None = None, cause: BaseException | None = None) -> None:
        """Put back the finished run an ``add-teacher`` (of ``added``) or a rescore of scoring settings opened, when
        it stops on an expected error (``cause``): its record, results and validation as they were, an added
        teacher's passes gone. The kept files move back by renames, which need no space (a full disk is a common
        cause); where they cannot, the error names both failures and how to finish the run."""
        if added is not None:
            self.drop_teacher(added)
        before = self.before  # what is still kept when this returns, close() removes
        old = before.get("results.json")
        if old is not None:
            tables = json.loads(old.read_bytes() if isinstance(old, Path) else old).get("tables") or {}
            if any(t not in before and (not (self.root / t).is_file()
                                        or hashlib.sha256((self.root / t).read_bytes()).hexdigest() != digest)
                   for t, digest in tables.items()):
                return  # the tables were rewritten with the teacher: an unfinished run (odiag rescore finishes it)
        try:
            # results.json last: until it is back, the run reads as unfinished (a kill meanwhile leaves no finished
            # run beside another command's tables)
            for name, kept in sorted(before.items(), key=lambda item: item[0] == "results.json"):
                if isinstance(kept, bytes):
                    if (self.root / name).is_file() and (self.root / name).read_bytes() == kept:
                        continue  # never replaced (the command stopped first): nothing to write, no space needed
                    try:
                        atomic_write(self.root / name, lambda f, data=kept: f.write(data), "wb")
                    except RunDirError:
                        if name != "config.yaml":
                            raise
                        # no room for it (a full disk, no hard links): gone rather than saying other settings than
                        # config.json; the next command writes it again from config.json (`_sync_yaml`)
                        (self.root / name).unlink(missing_ok=True)
                    continue
                move_into_place({self.root / name: kept})
                kept.unlink(missing_ok=True)  # a rename onto a link of the same file leaves both names (rename(2))
        except RunDirError as failed:
            if cause is None:
                raise
            first = str(cause) or ("stopped" if isinstance(cause, KeyboardInterrupt) else type(cause).__name__)
            raise RunDirError(f"{first}; the run could not be put back as it was ({failed}): finish it with "
                              f"{finish_command(self.root)}") from None
        if before:
            log.info("%s: %s; the run is as it was", self.root, f"teacher {added} was not added" if added else "not rescored")

    def drop_teacher(self, name: str) -> None:
        """Remove a teacher's passes on every path (its file changed; ``rescore`` redoes them)."""
        from harness.plan import slug

        mine = re.compile(rf"^(score|fill)-p\d+-{re.escape(slug(name))}\.npz$")  # not another name ending in -<name>
        for p in (self.root / "shards").glob("*/*.npz"):
            if mine.match(p.name):
                p.unlink()


def model_records(
    specs: Iterable[ModelSpec], stored: Mapping[str, dict], where: str, flag: str | None = "--out",
) -> dict[str, dict]:
    """``config.json``'s ``models``: every model of ``specs`` whose files are on this machine, by content
    (`harness.modelfiles`), with ``stored`` (the records of earlier commands) kept. Raises a
    RunDirError when a model's files differ from those the run recorded: work from two models never
    shares a tree. ``flag``: the option naming the run directory, whose fix is another one (None: a command
    that only reads the run, whose fix is the files)."""
    from harness.config import portable
    from harness.modelfiles import changed_file, fingerprint, model_dir, model_files

    out = dict(stored)
    for spec in specs:
        directory = model_dir(spec.id, spec.revision)
        if directory is None:  # a synthetic model, or a hub model not downloaded yet: recorded once it is
            continue
        key = portable(spec.id)
        before = stored.get(key) if isinstance(stored.get(key), dict) else {}
        known = before.get("files") if isinstance(before.get("files"), dict) else {}  # a hand-edited record: rehash
        files = model_files(directory, known)
        snapshot = directory.name if directory.parent.name == "snapshots" else None  # the hub commit it resolved to
        if before and (name := changed_file(known, files)):
            pin = f"pin revision {before['snapshot']} (the snapshot the run used)" if before.get("snapshot") else ""
            fixes = ["restore its files", *([pin] if pin else []), *([f"use {another(flag)}"] if flag else [])]
            raise RunDirError(
                f"{where}: model {key} changed since the run used it ({name} differs; fingerprint "
                f"{before.get('fingerprint')} there, {fingerprint(files)} now): "
                f"{', '.join(fixes[:-1]) + ', or ' + fixes[-1] if len(fixes) > 1 else fixes[0]}"
            )
        out[key] = {"revision": spec.revision, "snapshot": snapshot, "fingerprint": fingerprint(files), "files": files}
    return out


class NotAsWritten(Exception):
    """A stored file (a shard, a cached solution or summary) that reads but is not what was written there."""


def _misplaced(place: str, expected: str, question: str, name: str) -> str:
    """Why a shard whose recorded place is ``place`` is not this run's ``question``/``name`` (its place ``expected``)."""
    run, _, rest = place.partition("/")
    run_id = expected.partition("/")[0]
    if not place:
        return "no place recorded: not written by this odiag"
    if run != run_id:
        return f"written by another run (id {run}, this run's is {run_id}): a shard copied in"
    rest, _, identity = rest.partition("#")
    if rest != f"{question}/{name}":
        return f"written as {rest}.npz of this run, not as {question}/{name}.npz: a shard copied or renamed"
    ours = expected.partition("#")[2]
    return (f"written for another file of its teacher (identity {identity or 'none'}; this run's is {ours or 'none'}): "
            "a pass copied from another copy of this run")


def _identities(teachers: Iterable) -> dict[str, str]:
    """{slug of a teacher's name: its identity} of ``config.json``'s teacher records."""
    from harness.plan import slug

    return {slug(str(t["name"])): str(t["identity"]) for t in teachers
            if isinstance(t, dict) and "name" in t and "identity" in t}


def why_unreadable(exc: Exception) -> str:
    """Why a stored file could not be taken, in one short line: odiag's own reason whole, a library's cut."""
    if isinstance(exc, NotAsWritten):
        return str(exc)
    if isinstance(exc, ValueError) and "pickled" in str(exc):
        return "not an npz archive"
    text = str(exc).splitlines()[0][:100] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
