"""The standard error of processes an engine starts, relayed through this one.

vLLM starts its engine core in a process of its own. When the engine cannot start (its weights and KV
cache do not fit), that process prints Python's traceback of the cause and exits, and the parent is
told only "Engine core initialization failed. See root cause above": a setting to change reads as a
crash. `ChildStderr` gives the processes started while it is open a pipe as their standard error
(they inherit descriptor 2 when they start; ours is restored as the engine returns) and a thread
copies the pipe to our standard error as it comes. Tracebacks printed while the engine starts are
held back: `refused` drops them and answers the cause's own line (``ValueError: No available
memory...``) for the one-line error, `keep` prints them. Later output, tracebacks included, passes
at once: a crash mid-run is a bug and its report needs them.
"""

from __future__ import annotations

import os
import select
import sys
import threading
import time

# what continues a traceback block after its exception line: a chained exception (and the blank lines around it)
_CHAINED = (b"The above exception was the direct cause", b"During handling of the above exception")
_TRACEBACK = b"Traceback (most recent call last):"


class ChildStderr:
    """Open around the start of a child process (``with ChildStderr() as relay:``); the relay runs until
    every process holding the pipe has exited."""

    def __init__(self, *, hold: bool = True):
        self.hold = hold  # hold tracebacks back until `refused` or `keep`
        self._held: list[tuple[bool, bytes]] = []  # (a traceback block?, its bytes), in order: once one is held, all is
        self._causes: list[bytes] = []
        self._block: list[bytes] | None = None  # a traceback block being read
        self._block_cause: bytes | None = None
        self._after_cause = False  # the block's exception line was read; a chained one may follow
        self._pending = b""  # a "Process NAME:" line, held until the next says whether a traceback follows
        self._partial = b""
        self._lock = threading.Lock()
        self._last_read = time.monotonic()
        self._done = threading.Event()

    def __enter__(self) -> ChildStderr:
        sys.stderr.flush()
        try:
            self._out = os.dup(2)
        except OSError:  # no standard error to relay to
            self._out = None
            self._done.set()
            return self
        self._read_fd, write_fd = os.pipe()
        os.dup2(write_fd, 2)
        os.close(write_fd)
        threading.Thread(target=self._relay, name="odiag-engine-stderr", daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        if self._out is None:
            return
        sys.stderr.flush()
        os.dup2(self._out, 2)  # the children keep the pipe; from here only their output reaches it

    def refused(self, settle_s: float = 2.0) -> str | None:
        """The engine was refused at its start: drop the held tracebacks; the first cause's line, if one came."""
        self._settle(settle_s)
        with self._lock:
            self._close_block()
            self._write(b"".join(data for block, data in self._held if not block))
            self._held.clear()
            self.hold = False
            self._close_if_finished()
            return self._causes[0].decode(errors="replace").strip() if self._causes else None

    def keep(self, settle_s: float = 0.0) -> None:
        """Print what was held back, and hold nothing from here on."""
        self._settle(settle_s)
        with self._lock:
            self._close_block()
            self.hold = False
            self._write(b"".join(data for _, data in self._held))
            self._held.clear()
            self._close_if_finished()

    def _settle(self, seconds: float) -> None:
        """Wait until the children's output has been read: the pipe is closed, or empty and quiet for a moment."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            with self._lock:
                if self._done.is_set():
                    return
                unread = select.select([self._read_fd], [], [], 0)[0]
                if not unread and time.monotonic() - self._last_read > 0.25:
                    return
            self._done.wait(0.05)

    def _relay(self) -> None:
        try:
            while True:
                if not select.select([self._read_fd], [], [], 0.1)[0]:
                    continue
                with self._lock:  # read and taken in one step, so that `_settle` never sees a chunk in between
                    chunk = os.read(self._read_fd, 65536)
                    self._last_read = time.monotonic()
                    if not chunk:
                        self._close_block()
                        self._emit(self._pending + self._partial)
                        return
                    self._take(chunk)
        except OSError:  # our own stderr closed: nothing left to write to
            pass
        finally:
            with self._lock:
                os.close(self._read_fd)
                self._done.set()
                self._close_if_finished()

    def _close_if_finished(self) -> None:
        """Our copy of standard error, once the pipe is closed and nothing is held for it."""
        if self._done.is_set() and not self.hold and not self._held and self._out is not None:
            os.close(self._out)
            self._out = None

    def _take(self, chunk: bytes) -> None:
        *lines, self._partial = (self._partial + chunk).split(b"\n")
        for line in lines:
            self._line(line + b"\n")
        if self._partial and self._block is None and not self._pending and not self._held \
                and not _may_start_block(self._partial):
            self._write(self._partial)  # a progress bar's "\r" line, shown as it comes
            self._partial = b""

    def _line(self, line: bytes) -> None:
        text = line.rstrip(b"\r\n")
        if self._block is not None:
            if self._after_cause and text and not text.startswith(_CHAINED) and text != _TRACEBACK:
                self._close_block()  # the block ended at its exception line; this line is the next output
                self._line(line)
                return
            self._block.append(line)
            if text == _TRACEBACK:
                self._after_cause = False
            elif text and not text[:1].isspace() and not text.startswith(_CHAINED):
                if not self._after_cause and self._block_cause is None:
                    self._block_cause = text  # a chain prints its first cause first
                self._after_cause = True
            return
        if self.hold and text == _TRACEBACK:
            self._block = [self._pending, line]
            self._pending = b""
            return
        self._emit(self._pending)
        self._pending = b""
        if self.hold and text.startswith(b"Process ") and text.endswith(b":"):
            self._pending = line  # multiprocessing's header of a child's traceback
        else:
            self._emit(line)

    def _close_block(self) -> None:
        if self._block is not None:
            self._held.append((True, b"".join(self._block)))
            if self._block_cause is not None:
                self._causes.append(self._block_cause)
            self._block = None
            self._block_cause = None
        self._after_cause = False

    def _emit(self, data: bytes) -> None:
        """Output that is not a traceback: written, unless something before it is held."""
        if self._held or self._block is not None:
            self._held.append((False, data))
        else:
            self._write(data)

    def _write(self, data: bytes) -> None:
        while data and self._out is not None:
            data = data[os.write(self._out, data):]


def _may_start_block(partial: bytes) -> bool:
    return any(word.startswith(partial[: len(word)]) for word in (b"Traceback", b"Process "))
