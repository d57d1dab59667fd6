"""`ChildOutput`: what a child process started while it is open writes to standard output and error reaches
ours, less the tracebacks held back while an engine starts (vLLM's engine process logs one to standard output
and prints it to standard error when it cannot start). Each case runs in a fresh interpreter, so that its
descriptors 1 and 2 are pipes this test reads."""

import subprocess
import sys
import textwrap

# a child like vLLM's engine process when its KV cache does not fit: log lines on standard output (the traceback
# among them, each line behind the logger's prefix), multiprocessing's header and a chained traceback on
# standard error, a progress bar, and a line after each traceback
CHILD = r'''
import sys, time
log = "(EngineCore pid=7) ERROR 12-03 18:34:35 [core.py:1510] "
sys.stdout.write("(EngineCore pid=7) INFO 12-03 18:34:30 [core.py:133] Initializing\n")
sys.stdout.write(log + "EngineCore failed to start.\n" + log + "Traceback (most recent call last):\n")
sys.stdout.write(log + '  File "kv.py", line 9, in check\n' + log + "    raise ValueError(...)\n")
sys.stdout.write(log + "ValueError: No available memory for the cache blocks. Try more.\n")
sys.stdout.write("(EngineCore pid=7) ERROR 12-03 18:34:38 [executor.py:315] Worker died\n"); sys.stdout.flush()
w = sys.stderr.write
w("INFO loading weights\n"); sys.stderr.flush()
w("Loading: 0%\r"); sys.stderr.flush(); time.sleep(0.2); w("Loading: 100%\r\n")
w("Process EngineCore:\nTraceback (most recent call last):\n  File \"core.py\", line 1, in run\n    raise e\n")
w("KeyError: 'blocks'\n\nThe above exception was the direct cause of the following exception:\n\n")
w("Traceback (most recent call last):\n  File \"kv.py\", line 9, in check\n    raise ValueError(...)\n")
w("ValueError: No available memory for the cache blocks. Try more.\n")
w("WARNING after the traceback\n"); sys.stderr.flush()
'''
LEFT_OUT = ("(EngineCore pid=7) INFO 12-03 18:34:30 [core.py:133] Initializing\n"
            "(EngineCore pid=7) ERROR 12-03 18:34:35 [core.py:1510] EngineCore failed to start.\n"
            "(EngineCore pid=7) ERROR 12-03 18:34:38 [executor.py:315] Worker died\n")
LEFT_ERR = "INFO loading weights\nLoading: 0%\rLoading: 100%\r\nWARNING after the traceback\n"


def _run(body: str) -> subprocess.CompletedProcess:
    script = textwrap.dedent(f"""
        import subprocess, sys
        from harness.backends.child_output import ChildOutput
        CHILD = {CHILD!r}
        """) + textwrap.dedent(body)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(), done.stderr.decode())  # "\r" kept


def _child_alone() -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True)
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(), done.stderr.decode())


def test_a_refused_start_drops_the_childs_tracebacks_and_answers_their_exception_lines():
    done = _run("""
        relay = ChildOutput()
        with relay:
            sys.stderr.write("parent inside\\n"); sys.stderr.flush()
            subprocess.run([sys.executable, "-c", CHILD])
        causes = relay.causes()
        relay.drop()
        sys.stdout.write("causes: " + " | ".join(causes) + "\\n")
        sys.stderr.write("odiag: error: ...\\n")
        """)
    assert done.returncode == 0, done.stderr
    memory = "ValueError: No available memory for the cache blocks. Try more."
    assert done.stdout == LEFT_OUT + f"causes: KeyError: 'blocks' | {memory} | {memory}\n"  # standard error's first
    assert done.stderr == "parent inside\n" + LEFT_ERR + "odiag: error: ...\n"


def test_a_start_that_went_on_prints_what_was_held_whole_and_later_output_passes_at_once():
    done = _run("""
        relay = ChildOutput()
        with relay:
            subprocess.run([sys.executable, "-c", CHILD])
        relay.keep(settle_s=5)
        sys.stdout.write("-- kept\\n"); sys.stderr.write("-- kept\\n"); sys.stdout.flush(); sys.stderr.flush()
        subprocess.run([sys.executable, "-c", CHILD])  # our own descriptors again: not relayed
        """)
    assert done.returncode == 0, done.stderr
    alone = _child_alone()
    assert done.stdout == alone.stdout + "-- kept\n" + alone.stdout
    assert done.stderr == alone.stderr + "-- kept\n" + alone.stderr


def test_a_child_that_keeps_running_passes_its_later_tracebacks_once_the_start_is_over():
    """A crash mid-run is a bug: its traceback is the report."""
    done = _run("""
        relay = ChildOutput()
        with relay:  # a child that writes once the start is over
            child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read(); exec(sys.argv[1])", CHILD],
                                     stdin=subprocess.PIPE)
        relay.keep()
        child.stdin.close()
        child.wait()
        relay.keep(settle_s=10)
        """)
    assert done.returncode == 0, done.stderr
    alone = _child_alone()
    assert (done.stdout, done.stderr) == (alone.stdout, alone.stderr)


def test_a_start_with_nothing_printed_answers_no_exception_line():
    done = _run("""
        relay = ChildOutput()
        with relay:
            subprocess.run([sys.executable, "-c", "pass"])
        print(relay.causes())
        """)
    assert done.returncode == 0 and done.stdout.strip() == "[]" and done.stderr == ""


def test_with_no_standard_error_the_children_write_where_we_do():
    done = _run("""
        import os
        os.close(2)
        sys.stderr = None
        relay = ChildOutput()
        with relay:
            subprocess.run([sys.executable, "-c", "print('child out')"])
        relay.keep(settle_s=5)
        print("after")
        """)
    assert done.returncode == 0 and done.stdout == "child out\nafter\n"


def test_a_logged_traceback_split_between_reads_at_its_line_ends_is_still_one():
    """vLLM's logger ends each line of a record with "\r\n": a read that ends between the two must not send the
    line out as a progress bar's, which would let the traceback through."""
    child = "\n".join([
        "import sys, time",
        "log = '(EngineCore pid=7) ERROR 12-03 18:34:35 [core.py:1510] '",
        "for part in (log + 'Traceback (most recent call last):\\r', '\\n' + log + '  File \"kv.py\", line 9\\r',",
        "             '\\n' + log + 'ValueError: No available memory for the cache blocks.\\r\\n'):",
        "    sys.stdout.write(part); sys.stdout.flush(); time.sleep(0.3)",
    ])
    done = _run(f"""
        relay = ChildOutput()
        with relay:
            subprocess.run([sys.executable, "-c", {child!r}])
        causes = relay.causes()
        relay.drop()
        print(causes)
        """)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "['ValueError: No available memory for the cache blocks.']\n"


def test_with_nothing_held_the_tracebacks_pass_as_they_come_and_their_exception_lines_are_still_read():
    """odiag -v: vLLM's tracebacks shown as they come; the error still names the cause."""
    done = _run("""
        relay = ChildOutput(hold=False)
        with relay:
            subprocess.run([sys.executable, "-c", CHILD])
        print(len(relay.causes()))
        """)
    alone = _child_alone()
    assert done.returncode == 0 and done.stderr == alone.stderr and done.stdout == alone.stdout + "3\n"
