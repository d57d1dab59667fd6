"""The engine watcher ends, after a kill -9 of odiag, what appeared while an engine started and what that
started later, and leaves the rest of odiag's children alone (inside a notebook: the notebook's own)."""

import json
import subprocess
import sys
import textwrap
import time

import pytest

psutil = pytest.importorskip("psutil")

SLEEPER = "import time; time.sleep(300)"

HOST = textwrap.dedent(f"""
    import json, subprocess, sys, time
    from harness.backends import reaper
    def sleeper(code={SLEEPER!r}):
        return subprocess.Popen([sys.executable, "-c", code])
    earlier = sleeper()
    with reaper.starting():
        engine = sleeper("import subprocess, sys, time; time.sleep(1.5); "
                         "subprocess.Popen([sys.executable, '-c', {SLEEPER!r}]); time.sleep(300)")
    later = sleeper()
    print(json.dumps({{"earlier": earlier.pid, "engine": engine.pid, "later": later.pid}}), flush=True)
    deadline = time.monotonic() + 60
    while not (worker := __import__("psutil").Process(engine.pid).children()) and time.monotonic() < deadline:
        time.sleep(0.1)  # the engine's own child, started after its start ended
    print(json.dumps({{"worker": worker[0].pid}}), flush=True)
    time.sleep(300)
""")


def test_a_kill_9_ends_the_engines_processes_and_leaves_the_others():
    host = subprocess.Popen([sys.executable, "-c", HOST], stdout=subprocess.PIPE, text=True)
    procs = {}
    try:
        for _ in range(2):  # its sleepers at once, then the engine's worker once it runs
            procs |= {k: psutil.Process(v) for k, v in json.loads(host.stdout.readline()).items()}
        time.sleep(0.6)  # the watcher has looked since the worker started
        host.kill()
        host.wait(10)
        gone, alive = psutil.wait_procs([procs["engine"], procs["worker"]], timeout=10)
        assert not alive, "the engine's processes outlived odiag"
        time.sleep(1.0)  # the watcher has had four looks since
        assert procs["earlier"].is_running() and procs["later"].is_running(), "a process not the engine's was ended"
    finally:
        try:
            procs |= {f"child {p.pid}": p for p in psutil.Process(host.pid).children(recursive=True)}
        except psutil.Error:  # the host is gone: its children are those it printed
            pass
        for p in procs.values():
            try:
                p.kill()
            except psutil.Error:
                pass
        host.kill()
