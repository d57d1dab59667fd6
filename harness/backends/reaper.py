"""Processes an engine started, ended with odiag however odiag ends.

vLLM runs an engine's core (and its workers) in processes of their own. odiag's clean stops (a finished
run, Ctrl-C, SIGTERM) end them; a ``kill -9`` of odiag alone does not, and they go on holding their share
of the device, so the same command, run again to resume, finds no memory for its engines. `watch` starts,
once per odiag process and before its first engine, a small watcher process that notes odiag's descendants
(four times a second) and waits on a pipe only odiag holds open: when odiag ends, in any way, the pipe
closes and the watcher kills the descendants it noted that are still the same processes (pid and start
time), multiprocessing's resource tracker aside (it cleans up after itself). Ctrl-C reaches the watcher
too and is ignored by it: the engines' own processes stop, and odiag's clean-up runs.
"""

from __future__ import annotations

import os
import subprocess
import sys

_WATCHER = r"""
import os, select, signal, sys
import psutil
signal.signal(signal.SIGINT, signal.SIG_IGN)
fd, me = int(sys.argv[1]), os.getpid()
odiag, seen = psutil.Process(int(sys.argv[2])), {}
while not select.select([fd], [], [], 0.25)[0]:  # readable: every holder of the write end has exited
    try:
        children = odiag.children(recursive=True)
    except psutil.Error:
        break
    for p in children:
        if p.pid != me and p.pid not in seen:
            try:
                seen[p.pid] = (p.create_time(), "resource_tracker" in " ".join(p.cmdline()))
            except psutil.Error:
                pass
for pid, (started, tracker) in seen.items():
    try:
        p = psutil.Process(pid)
        if not tracker and abs(p.create_time() - started) < 0.01:
            p.kill()
    except psutil.Error:
        pass
"""

_watcher: list[tuple[int, subprocess.Popen]] = []  # its pipe's write end, open for the life of this process


def watch() -> None:
    """Start this process's watcher, unless it runs (a no-op where it cannot start)."""
    if _watcher:
        return
    read, write = os.pipe()  # not inherited by later children (PEP 446): only this process holds ``write``
    try:
        started = subprocess.Popen([sys.executable, "-c", _WATCHER, str(read), str(os.getpid())], pass_fds=(read,),
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError:
        os.close(write)
        return
    finally:
        os.close(read)
    _watcher.append((write, started))
