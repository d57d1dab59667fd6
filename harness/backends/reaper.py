"""Processes an engine started, ended with odiag however odiag ends.

vLLM runs an engine's core (and its workers) in processes of their own. odiag's clean stops (a finished
run, Ctrl-C, SIGTERM) end them; a ``kill -9`` of odiag alone does not, and they go on holding their share
of the device, so the same command, run again to resume, finds no memory for its engines. `starting`
marks an engine's start: once per process it starts a small watcher process, then tells it which of the
process's descendants already run. The watcher notes (four times a second) every other descendant that
appears while an engine starts, and from then on their own descendants; once the process has ended in any
way (its pipe to the watcher closed, or it is gone or a zombie: an engine forked from it holds the pipe
too), it kills those it noted that still run, multiprocessing's resource tracker aside (it cleans up after
itself). What the process started otherwise (inside a notebook or lm-eval: that program's own children)
is not the engines' and is left alone. The watcher ignores Ctrl-C and SIGTERM sent to the whole process
group: odiag's own clean stop runs, and ends the engines first.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys

_WATCHER = r"""
import os, select, signal, sys
import psutil
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
fd, me = int(sys.argv[1]), os.getpid()
host, noted, maybe, before, pending = psutil.Process(int(sys.argv[2])), {}, {}, None, b""

def note(p, into):
    if p.pid != me and p.pid not in noted:
        try:
            if "multiprocessing.resource_tracker" not in " ".join(p.cmdline()):
                into[p.pid] = p
        except psutil.Error:
            pass

def look():  # False once the host has ended
    try:
        if host.status() == psutil.STATUS_ZOMBIE:
            return False
    except psutil.Error:
        return False
    if before is None and not noted:
        return True
    kids = {}  # one scan of the process table per look
    for p in psutil.process_iter(["ppid"]):
        kids.setdefault(p.info["ppid"], []).append(p)

    def below(pid):
        found, todo = [], [pid]
        while todo:
            for q in kids.get(todo.pop(), ()):
                found.append(q)
                todo.append(q.pid)
        return found

    if before is not None:
        for p in below(host.pid):
            if p.pid not in before:  # while an engine starts, what is new may be its own;
                note(p, maybe)  # which is, odiag says once the start has ended
    for pid, p in list(noted.items()):
        if not p.is_running():
            del noted[pid]
            continue
        for q in below(pid):
            note(q, noted)
    return True

def hear(wait):  # False once every holder of the write end has exited
    global before, maybe, pending
    if not select.select([fd], [], [], wait)[0]:
        return True
    said = os.read(fd, 65536)
    *lines, pending = (pending + said).split(b"\n")
    for line in lines:
        word, *pids = line.split()
        if word == b"open":
            before, maybe = {int(p) for p in pids}, {}
        else:  # "close": the start has ended, and these are what it started
            for pid in {int(p) for p in pids} - (before or set()):
                try:
                    note(psutil.Process(pid), noted)
                except psutil.Error:
                    pass
            before, maybe = None, {}
    return bool(said)

while look() and hear(0.25):
    pass
hear(0)  # a start that ended just before the host did
for p in [*noted.values(), *maybe.values()]:
    try:
        p.kill()  # psutil's Process refuses a pid another process has taken since
    except psutil.Error:
        pass
"""

_watcher: list[tuple[int, subprocess.Popen]] = []  # its pipe's write end, open for the life of this process


def watch() -> None:
    """Start this process's watcher, unless it runs (a no-op where it cannot start)."""
    if _watcher:
        return
    read, write = os.pipe()
    try:
        started = subprocess.Popen([sys.executable, "-c", _WATCHER, str(read), str(os.getpid())], pass_fds=(read,),
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError:
        os.close(write)
        return
    finally:
        os.close(read)
    _watcher.append((write, started))


def _tell(line: str) -> None:
    if _watcher:
        with contextlib.suppress(OSError):
            os.write(_watcher[0][0], line.encode() + b"\n")


@contextlib.contextmanager
def starting():
    """Inside, an engine starts: the processes that appear are its own, ended with this process."""
    try:
        import psutil
    except ImportError:  # no watcher without it (vLLM depends on it)
        yield
        return
    watch()
    running = [str(p.pid) for p in psutil.Process().children(recursive=True)]
    if _watcher:
        running.append(str(_watcher[0][1].pid))
    _tell(" ".join(["open", *running]))
    try:
        yield
    finally:
        _tell(" ".join(["close", *(str(p.pid) for p in psutil.Process().children(recursive=True))]))
