"""`ChildStderr`: what a child process started while it is open writes to standard error reaches ours, less
the tracebacks held back while an engine starts (vLLM's engine process prints one when it cannot start).
Each case runs in a fresh interpreter, so that its descriptor 2 is a pipe this test reads."""

import subprocess
import sys
import textwrap

# a child like vLLM's engine process when its KV cache does not fit: a log line, multiprocessing's header and
# a chained traceback, then a line after it
CHILD = r'''
import sys, time
w = sys.stderr.write
w("INFO loading weights\n"); sys.stderr.flush()
w("Loading: 0%\r"); sys.stderr.flush(); time.sleep(0.2); w("Loading: 100%\r\n")
w("Process EngineCore:\nTraceback (most recent call last):\n  File \"core.py\", line 1, in run\n    raise e\n")
w("KeyError: 'blocks'\n\nThe above exception was the direct cause of the following exception:\n\n")
w("Traceback (most recent call last):\n  File \"kv.py\", line 9, in check\n    raise ValueError(...)\n")
w("ValueError: No available memory for the cache blocks. Try more.\n")
w("WARNING after the traceback\n"); sys.stderr.flush()
'''


def _run(body: str) -> subprocess.CompletedProcess:
    script = textwrap.dedent(f"""
        import subprocess, sys
        from harness.backends.child_stderr import ChildStderr
        CHILD = {CHILD!r}
        """) + textwrap.dedent(body)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(), done.stderr.decode())  # "\r" kept


def _child_alone() -> str:
    return subprocess.run([sys.executable, "-c", CHILD], capture_output=True).stderr.decode()


def test_a_refused_start_drops_the_childs_traceback_and_answers_its_first_cause():
    done = _run("""
        relay = ChildStderr()
        with relay:
            sys.stderr.write("parent inside\\n"); sys.stderr.flush()
            subprocess.run([sys.executable, "-c", CHILD])
        print(relay.refused())
        sys.stderr.write("odiag: error: ...\\n")
        """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "KeyError: 'blocks'"
    assert done.stderr == ("parent inside\nINFO loading weights\nLoading: 0%\rLoading: 100%\r\n"
                           "WARNING after the traceback\nodiag: error: ...\n")


def test_a_start_that_went_on_prints_what_was_held_whole_and_later_tracebacks_pass_at_once():
    done = _run("""
        relay = ChildStderr()
        with relay:
            child = subprocess.Popen([sys.executable, "-c", CHILD])
        child.wait()
        relay.keep(settle_s=5)
        sys.stderr.write("-- kept\\n"); sys.stderr.flush()
        child = subprocess.Popen([sys.executable, "-c", CHILD])  # our stderr again: not relayed
        child.wait()
        """)
    assert done.returncode == 0, done.stderr
    held, after = done.stderr.split("-- kept\n")
    child_text = _child_alone()
    assert held == child_text
    assert after == child_text


def test_a_child_that_keeps_running_passes_its_later_tracebacks_once_the_start_is_over():
    """A crash mid-run is a bug: its traceback is the report."""
    done = _run("""
        relay = ChildStderr()
        with relay:  # a child that writes once the start is over
            child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read(); exec(sys.argv[1])", CHILD],
                                     stdin=subprocess.PIPE)
        relay.keep()
        child.stdin.close()
        child.wait()
        relay.keep(settle_s=10)
        """)
    assert done.returncode == 0, done.stderr
    assert done.stderr == _child_alone()


def test_a_start_with_nothing_printed_answers_no_cause():
    done = _run("""
        relay = ChildStderr()
        with relay:
            subprocess.run([sys.executable, "-c", "pass"])
        print(relay.refused())
        """)
    assert done.returncode == 0 and done.stdout.strip() == "None" and done.stderr == ""
