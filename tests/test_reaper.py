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
    time.sleep(2.5)  # the engine's own child started after its start ended
    worker = [c.pid for c in __import__("psutil").Process(engine.pid).children()]
    print(json.dumps({{"earlier": earlier.pid, "engine": engine.pid, "worker": worker[0], "later": later.pid}}), flush=True)
    time.sleep(300)
""")


def test_a_kill_9_ends_the_engines_processes_and_leaves_the_others():
    host = subprocess.Popen([sys.executable, "-c", HOST], stdout=subprocess.PIPE, text=True)
    procs = {}
    try:
        procs = {k: psutil.Process(v) for k, v in json.loads(host.stdout.readline()).items()}
        host.kill()
        host.wait(10)
        gone, alive = psutil.wait_procs([procs["engine"], procs["worker"]], timeout=10)
        assert not alive, "the engine's processes outlived odiag"
        time.sleep(1.0)  # the watcher has had four looks since
        assert procs["earlier"].is_running() and procs["later"].is_running(), "a process not the engine's was ended"
    finally:
        for p in [*procs.values(), *psutil.Process().children(recursive=True)]:
            try:
                p.kill()
            except psutil.Error:
                pass
        host.kill()
