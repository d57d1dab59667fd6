"""The output of processes an engine starts, relayed through this one.

vLLM starts its engine core in a process of its own. When the engine cannot start (its weights and KV
cache do not fit), that process logs Python's traceback of the cause to standard output, prints it again to
standard error, and exits; the parent is told only "Engine core initialization failed. See root cause
above". `ChildOutput` gives the processes started while it is open pipes as their standard output and error
(they inherit descriptors 1 and 2 when they start; ours are restored as the engine returns), and a thread
per pipe copies it to ours as it comes. Tracebacks printed while the engine starts are held back, with
everything after them: `causes` answers their exception lines (``ValueError: No available memory...``), `drop`
lets go of the tracebacks and prints the rest, `keep` prints it all. Later output, tracebacks
included, passes at once: a crash mid-run is a bug and its report needs them.

A traceback is told by its lines, with whatever a logger puts before each (vLLM: ``(EngineCore pid=7)
ERROR 12-03 18:34:35 [core.py:1510] ``): the line ``Traceback (most recent call last):``, indented
frames, the exception's line, and chained ones after it.
"""

from __future__ import annotations

import fcntl
import os
import select
import sys
import threading
import time

_TRACEBACK = b"Traceback (most recent call last):"
# what continues a traceback block after its exception line: a chained exception (and the blank lines around it)
_CHAINED = (b"The above exception was the direct cause", b"During handling of the above exception")


class ChildOutput:
    """Open around the start of a child process (``with ChildOutput() as relay:``); the relays run until every
    process holding their pipes has exited."""

    def __init__(self, *, hold: bool = True):
        self._relays = [_Relay(1, hold), _Relay(2, hold)]

    def __enter__(self) -> ChildOutput:
        for relay in self._relays:
            relay.open()
        return self

    def __exit__(self, *exc) -> None:
        for relay in self._relays:
            relay.restore()

    def causes(self, settle_s: float = 2.0) -> list[str]:
        """The exception lines of every traceback the children printed (each link of a chain, in order;
        standard error's first), once their output has been read: the pipes closed, or empty and quiet for a
        moment, within ``settle_s``."""
        deadline = time.monotonic() + settle_s
        for relay in self._relays:
            relay.settle(deadline)
        return [c.decode(errors="replace").strip() for relay in reversed(self._relays) for c in relay.exception_lines()]

    def drop(self) -> None:
        """Print what was held back but its tracebacks, and hold nothing from here on."""
        for relay in self._relays:
            relay.release(tracebacks=False)

    def keep(self, settle_s: float = 0.0) -> None:
        """Print what was held back, and hold nothing from here on."""
        deadline = time.monotonic() + settle_s
        for relay in self._relays:
            relay.settle(deadline)
            relay.release(tracebacks=True)


class _Relay:
    """One descriptor's pipe and the thread that copies it."""

    def __init__(self, fd: int, hold: bool):
        self.fd, self.hold = fd, hold
        self._out: int | None = None  # ours, written to (closed once the pipe is and nothing is held for it)
        self._saved: int | None = None  # ours, put back by `restore`
        self._read_fd = -1
        self._held: list[tuple[bool, bytes]] = []  # (a traceback block?, its bytes), in order: once one is held, all is
        self._causes: list[bytes] = []  # the exception line of each link of each traceback read
        self._block: list[bytes] | None = None  # a traceback block being read
        self._prefix = b""  # what a logger put before each of its lines
        self._after_cause = False  # the block's exception line was read; a chained one may follow
        self._pending = b""  # a "Process NAME:" line, held until the next says whether a traceback follows
        self._partial = b""
        self._lock = threading.Lock()
        self._last_read = time.monotonic()
        self._done = threading.Event()
        self._done.set()  # until the pipe is open

    def open(self) -> None:
        stream = sys.stdout if self.fd == 1 else sys.stderr
        try:
            if stream is not None:
                stream.flush()
            self._saved = _above_std(self.fd)
            self._out = _above_std(self.fd)
            read_fd, write_fd = os.pipe()
            # a pipe's ends may take a standard descriptor that is closed: moved above them
            self._read_fd, write_fd = _above_std(read_fd, close=True), _above_std(write_fd, close=True)
        except (OSError, ValueError):  # no such descriptor, or none left: the children write where we do
            for fd in (self._saved, self._out):
                if fd is not None:
                    os.close(fd)
            self._saved = self._out = None
            return
        os.dup2(write_fd, self.fd)
        os.close(write_fd)
        self._done.clear()
        threading.Thread(target=self._run, name=f"odiag-engine-output-{self.fd}", daemon=True).start()

    def restore(self) -> None:
        if self._saved is None:
            return
        stream = sys.stdout if self.fd == 1 else sys.stderr
        try:
            if stream is not None:
                stream.flush()
        finally:
            os.dup2(self._saved, self.fd)  # the children keep the pipe; from here only their output reaches it
            os.close(self._saved)
            self._saved = None

    def settle(self, deadline: float) -> None:
        """Wait until the children's output has been read: the pipe is closed, or empty and quiet for a moment."""
        poll = select.poll()
        while time.monotonic() < deadline:
            with self._lock:
                if self._done.is_set():
                    return
                if not self._unread(poll) and time.monotonic() - self._last_read > 0.25:
                    return
            self._done.wait(0.05)

    def exception_lines(self) -> list[bytes]:
        with self._lock:
            self._close_block()
            return list(self._causes)

    def release(self, tracebacks: bool) -> None:
        with self._lock:
            self._close_block()
            self.hold = False
            self._write(b"".join(data for block, data in self._held if tracebacks or not block) + self._pending)
            self._held.clear()
            self._pending = b""
            self._close_if_finished()

    def _unread(self, poll) -> bool:
        poll.register(self._read_fd, select.POLLIN)
        try:
            return bool(poll.poll(0))
        finally:
            poll.unregister(self._read_fd)

    def _run(self) -> None:
        poll = select.poll()
        poll.register(self._read_fd, select.POLLIN)
        try:
            self._relay(poll)
        except Exception:  # noqa: BLE001 - a relay that stops would leave the children writing to a full pipe
            with self._lock:
                self._write(b"".join(data for _, data in self._held) + self._pending + self._partial)
                self._held.clear()
                self._pending = self._partial = b""
                self.hold = False
            while chunk := _read(self._read_fd):
                self._write(chunk)
        finally:
            with self._lock:
                os.close(self._read_fd)
                self._done.set()
                self._close_if_finished()

    def _relay(self, poll) -> None:
        while True:
            if not poll.poll(100):
                continue
            with self._lock:  # read and taken in one step, so that `settle` never sees a chunk in between
                chunk = _read(self._read_fd)
                self._last_read = time.monotonic()
                if not chunk:
                    self._close_block()
                    self._emit(self._pending + self._partial)
                    self._pending = self._partial = b""
                    return
                self._take(chunk)

    def _take(self, chunk: bytes) -> None:
        *lines, self._partial = (self._partial + chunk).split(b"\n")
        for line in lines:
            self._line(line + b"\n")
        # a progress bar's "\r" line, shown as it comes; not one that ends at its "\r", which may be half of a
        # "\r\n" that vLLM's logger ends lines with (a traceback's among them) and the next read completes
        if b"\r" in self._partial and not self._partial.endswith(b"\r") and self._block is None \
                and not self._pending and not self._held:
            self._write(self._partial)
            self._partial = b""

    def _line(self, line: bytes) -> None:
        text = line.rstrip(b"\r\n")
        if self._block is not None:
            if not text.startswith(self._prefix):
                self._close_block()  # another record's line: the block ended
                self._line(line)
                return
            own = text[len(self._prefix):]
            if self._after_cause and own and not own.startswith(_CHAINED) and own != _TRACEBACK:
                self._close_block()  # the block ended at its exception line; this line is the next output
                self._line(line)
                return
            self._block.append(line)
            if not self.hold:
                self._write(line)  # read for its exception lines, shown as it comes
            if own == _TRACEBACK:
                self._after_cause = False
            elif own and not own[:1].isspace() and not own.startswith(_CHAINED):
                if not self._after_cause:
                    self._causes.append(own)  # each link of a chain: its first cause first
                self._after_cause = True
            return
        if text.endswith(_TRACEBACK):
            self._prefix = text[: -len(_TRACEBACK)]
            self._block = [self._pending, line]
            if not self.hold:
                self._write(self._pending + line)
            self._pending = b""
            return
        self._emit(self._pending)
        self._pending = b""
        if self.hold and text.startswith(b"Process ") and text.endswith(b":"):
            self._pending = line  # multiprocessing's header of a child's traceback
        else:
            self._emit(line)

    def _close_block(self) -> None:
        if self._block is not None and self.hold:
            self._held.append((True, b"".join(self._block)))
        self._block = None
        self._after_cause = False

    def _emit(self, data: bytes) -> None:
        """Output that is not a traceback: written, unless something before it is held."""
        if self._held or self._block is not None:
            self._held.append((False, data))
        else:
            self._write(data)

    def _write(self, data: bytes) -> None:
        while data and self._out is not None:
            try:
                data = data[os.write(self._out, data):]
            except OSError:  # ours closed (a reader gone): nothing left to write to
                return

    def _close_if_finished(self) -> None:
        if self._done.is_set() and not self.hold and not self._held and self._out is not None:
            os.close(self._out)
            self._out = None


def _above_std(fd: int, close: bool = False) -> int:
    """A copy of ``fd`` numbered 3 or more, not inherited by children (``close``: ``fd`` itself let go)."""
    copy = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    if close:
        os.close(fd)
    return copy


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except OSError:
        return b""
