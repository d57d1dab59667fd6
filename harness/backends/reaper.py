"""Processes an engine started, ended with odiag however odiag ends.

vLLM runs an engine's core (and its workers) in processes of their own. odiag's clean stops (a finished
run, Ctrl-C, SIGTERM) end them; a ``kill -9`` of odiag alone does not, and they go on holding their share
of the device, so the same command, run again to resume, finds no memory for its engines. `watch` starts,
once per process and before its first engine, a small watcher process that notes the process's descendants
(four times a second) and, once the process has ended in any way (its pipe to the watcher closed, or it is
gone or a zombie: an engine forked from it holds the pipe too), kills those it noted that still run,
multiprocessing's resource tracker aside (it cleans up after itself). The watcher ignores Ctrl-C and SIGTERM
sent to the whole process group: odiag's own clean stop runs, and ends the engines first. Run inside another
program (a notebook, lm-eval), what it ends are that program's descendants once that program ends.
"""

from __future__ import annotations

import os
import subprocess
import sys

_WATCHER = r"""
import os, select, signal, sys
import psutil
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
fd, me = int(sys.argv[1]), os.getpid()
host, seen = psutil.Process(int(sys.argv[2])), {}
while not select.select([fd], [], [], 0.25)[0]:  # readable: every holder of the write end has exited
    try:
        if host.status() == psutil.STATUS_ZOMBIE:
            break
        children = host.children(recursive=True)
    except psutil.Error:
        break
    for p in children:
        if p.pid != me and p.pid not in seen:
            try:
                if "multiprocessing.resource_tracker" not in " ".join(p.cmdline()):
                    seen[p.pid] = p
            except psutil.Error:
                pass
for p in seen.values():
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
