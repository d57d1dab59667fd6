"""Progress of a run: typed events from the library, rendered by the command line.

The library never prints progress. ``harness.pipeline.run`` takes one callback and calls it with
three kinds of frozen event: `RunStarted` (what the run will diagnose), `PhaseProgress` (a phase's
work at the level of rollouts and tokens, also from inside backend calls) and `RunFinished`.
`Phases` is the library's side: it times phases, counts what the backend wrapper reports and
estimates work not yet planned. `Reporter` is the command line's side (``odiag run``, ``demo``,
``add-teacher``, ``eval``): one tqdm bar per phase on a terminal; elsewhere (a log file, a pipe) a
plain line at least every ``interval`` seconds and at each phase's end; and closing lines with wall
time, rollouts and tokens per phase.

Backends report from inside a call through an optional ``on_done(completions, tokens)`` argument
of ``sample`` and ``score``: completions (or forward passes) finished and tokens generated since the
previous report. `call` passes it to backends that accept it and reports the whole call at its end
for those that do not.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TextIO

from harness.wording import plural

OnDone = Callable[[int, int], None]


@dataclasses.dataclass(frozen=True)
class RunStarted:
    """What a run is about to diagnose."""

    task: str  # task name
    questions: int  # questions this run diagnoses
    available: int | None  # questions the task has; None when it generates them on demand
    teachers: int  # teachers scored
    out: str  # the run directory


@dataclasses.dataclass(frozen=True)
class PhaseProgress:
    """One phase's progress in this invocation (work loaded from the run directory is not counted)."""

    phase: str  # "initial rollouts", "artefacts", "teacher passes", "targeted rollouts"
    unit: str  # what done and planned count: "rollouts", "samples" or "passes"
    done: int  # units finished
    planned: int  # units planned so far (a targeted phase plans round by round)
    expected: int | None  # estimated total of the phase (planned plus what later rounds will plan); None: unknown
    rollouts: int  # completions sampled in the phase
    tokens: int  # tokens those completions generated
    elapsed: float  # seconds since the phase started
    budget: int | None = None  # targeted-rollout budget of the run (per-question budget x questions); None: no cap
    spent: int = 0  # rollouts counted against that budget, those of earlier invocations included
    step: str = ""  # where within the phase, e.g. "window 2/3"
    final: bool = False  # the phase has ended
    rounds: bool = False  # planned round by round until a strategy plans nothing: any total is an estimate
    tokens_left: float | None = None  # estimated tokens the phase has still to generate; None: not estimated (ETA by units)


@dataclasses.dataclass(frozen=True)
class RunFinished:
    """A run has written its results."""

    out: str  # the run directory
    phases: tuple[PhaseProgress, ...]  # each phase's final event, in order
    elapsed: float  # seconds since the run started
    loading: float = 0.0  # of those, seconds spent loading models (counted in no phase)


Event = RunStarted | PhaseProgress | RunFinished
Callback = Callable[[Event], None]


def call(method: Callable, requests: Sequence, on_done: OnDone | None, count: Callable[[Any], int]) -> list:
    """``method(requests)``, with ``on_done`` passed when the backend accepts it; otherwise the whole
    call is reported when it returns (``count(result)`` is the tokens of one result)."""
    if on_done is None:
        return method(requests)
    if accepts_on_done(method):
        return method(requests, on_done=on_done)
    results = method(requests)
    on_done(len(results), sum(count(r) for r in results))
    return results


def accepts_on_done(method: Callable) -> bool:
    try:
        return "on_done" in inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False


class Phase:
    """The counters of one running phase; the backend wrapper feeds them while the phase is bound."""

    def __init__(self, owner: Phases, name: str, unit: str, budget: int | None,
                 steps: Sequence[float] | None, rounds: bool = False, costs: Sequence[float] | None = None):
        self.owner, self.name, self.unit, self.rounds = owner, name, unit, rounds
        self.budget = budget
        self.steps = list(steps) if steps is not None else None  # weight of each step (e.g. window_weights)
        self.costs = list(costs) if costs is not None else None  # tokens of one unit in each step (window_tokens)
        self.step_index, self.step_label = 0, ""
        self.planned_by_step: dict[int, int] = {}
        self.done_by_step: dict[int, int] = {}
        self.estimated_by_step: dict[int, float] = {}  # tokens the units planned should generate, by their own estimates
        self.tokens_by_step: dict[int, int] = {}  # tokens they generated
        self.done = self.planned = self.rollouts = self.tokens = 0
        self._replayed = 0  # rollouts read back from stored rounds: spent from the budget, no work of this phase
        self.started = time.monotonic()
        self._last_emit = -1.0
        self.last: PhaseProgress | None = None

    # fed by the backend wrapper ----------------------------------------------------------------------

    def plan(self, units: int, tokens: float = 0.0) -> None:
        """``units`` more work planned (a backend call starting, a round planned whole), generating about
        ``tokens`` tokens."""
        self.planned += units
        self.planned_by_step[self.step_index] = self.planned_by_step.get(self.step_index, 0) + units
        self.estimated_by_step[self.step_index] = self.estimated_by_step.get(self.step_index, 0.0) + tokens
        self.emit(force=True)

    def advance(self, units: int, rollouts: int = 0, tokens: int = 0) -> None:
        self.done += units
        self.done_by_step[self.step_index] = self.done_by_step.get(self.step_index, 0) + units
        self.tokens_by_step[self.step_index] = self.tokens_by_step.get(self.step_index, 0) + tokens
        self.rollouts += rollouts
        self.tokens += tokens
        self.emit()

    def replayed(self, rollouts: int) -> None:
        """``rollouts`` read back from stored rounds: spent from the budget, but no work of this phase."""
        self._replayed += rollouts
        self.emit()

    def sampled(self, completions: int, tokens: int) -> None:
        """The ``on_done`` hook of a sampling call."""
        self.advance(completions, completions, tokens)

    def scored(self, passes: int, _tokens: int = 0) -> None:
        """The ``on_done`` hook of a scoring call."""
        self.advance(passes)

    # called by the pipeline ------------------------------------------------------------------------

    def loaded(self, seconds: float) -> None:
        """``seconds`` went to loading models: not the phase's work, so not in its time, rates or ETA."""
        self.started += seconds
        self.owner.loading += seconds

    def step(self, index: int, label: str) -> None:
        """Enter step ``index`` of ``steps`` (e.g. a depth window)."""
        self.step_index, self.step_label = index, label
        self.emit(force=True)

    # -----------------------------------------------------------------------------------------------

    def expected(self, by_step: dict[int, float] | None = None) -> int | None:
        """Planned work, plus for steps not yet planned the work per unit of weight seen so far (``by_step``:
        `_expected_by_step`, when at hand)."""
        if (by_step := by_step or self._expected_by_step()) is None:
            return None if self.steps is not None else self.planned
        return max(round(sum(by_step.values())), self.planned)

    def _expected_by_step(self) -> dict[int, float] | None:
        """Each step's units: planned, or for a later step not yet planned, its weight times the units per
        unit of weight of the steps planned so far; under a budget, what it leaves shared in proportion."""
        if self.steps is None:
            return None
        seen = [i for i, n in self.planned_by_step.items() if n > 0 and i < len(self.steps)]
        weight = sum(self.steps[i] for i in seen)
        if not seen or weight <= 0:
            return None
        per_weight = sum(self.planned_by_step[i] for i in seen) / weight
        by_step = {i: float(n) for i, n in self.planned_by_step.items()}
        for i, w in enumerate(self.steps):
            if i >= self.step_index and not self.planned_by_step.get(i):
                by_step[i] = per_weight * w
        if self.budget is not None:
            cap = self.done + max(self.budget - self.spent(), 0)
            later = {i: n for i, n in by_step.items() if not self.planned_by_step.get(i)}
            room = max(cap - self.planned, 0)
            if sum(later.values()) > room:
                by_step.update({i: n * room / sum(later.values()) for i, n in later.items()})
        return by_step

    def tokens_left(self, by_step: dict[int, float] | None = None) -> float | None:
        """Tokens the phase has still to generate. A rollout forced deep into a path generates fewer tokens than
        one near its start, so rollouts go faster through a window and in later windows while tokens/s holds: the
        ETA is these tokens at the tokens/s so far. The estimates (each request's own, ``costs`` per unit for a
        step not yet planned) are scaled by what the finished steps generated against theirs. In the current step,
        what its estimate leaves (the estimate less the tokens generated) gives way, as its units finish, to its
        units left at its mean estimate per unit: weighted (1 − s)² and 1 − (1 − s)² at a share s done, an
        estimate wrong by ε errs by at most 1.25ε on the tokens left, and by ε at the step's end, where the
        first alone would err by ε/(1 − s). None without costs or estimates. ``by_step``: as in `expected`."""
        i = self.step_index
        if self.costs is None or not any(self.estimated_by_step.values()):
            return None
        if (by_step := by_step or self._expected_by_step()) is None:
            return None
        cost = lambda k: self.costs[k] if k < len(self.costs) else 0.0  # noqa: E731
        finished = [k for k in self.estimated_by_step if k < i and self.estimated_by_step[k] > 0]
        scale = (sum(self.tokens_by_step.get(k, 0) for k in finished) / sum(self.estimated_by_step[k] for k in finished)
                 if finished else 1.0)
        current = 0.0
        if planned := self.planned_by_step.get(i, 0):
            done = self.done_by_step.get(i, 0)
            left, share = max(planned - done, 0), min(done / planned, 1.0)
            if estimate := scale * self.estimated_by_step.get(i, 0.0):
                weight = (1 - share) ** 2
                current = weight * max(estimate - self.tokens_by_step.get(i, 0), 0.0) + (1 - weight) * left * estimate / planned
            else:  # planned without an estimate (rollouts complete before any token): at the step's tokens per unit
                current = left * scale * cost(i)
        later = sum(n * cost(k) for k, n in by_step.items() if k >= i and not self.planned_by_step.get(k))
        return current + scale * later

    def spent(self) -> int:
        """Rollouts counted against the budget: those read back, and those drawn or complete in this phase."""
        return self._replayed + self.rollouts

    def event(self, final: bool = False) -> PhaseProgress:
        by_step = None if final else self._expected_by_step()  # read by both estimates
        return PhaseProgress(
            phase=self.name, unit=self.unit, done=self.done, planned=self.planned,
            expected=self.done if final else self.expected(by_step), rollouts=self.rollouts, tokens=self.tokens,
            elapsed=time.monotonic() - self.started, budget=self.budget, spent=self.spent(),
            step="" if final else self.step_label, final=final, rounds=self.rounds,
            tokens_left=None if final else self.tokens_left(by_step),
        )

    def emit(self, force: bool = False, final: bool = False) -> None:
        now = time.monotonic()
        if not (force or final) and now - self._last_emit < self.owner.min_interval:
            return
        self._last_emit = now
        self.last = self.event(final)
        self.owner.callback(self.last)


def _covered(path_lengths: Sequence[int], spans: Sequence[tuple[int, int]]) -> list[list[tuple[int, int, float]]]:
    """Per depth window, each path reaching it as (length, end of what it covers, share of a first-window width
    covered)."""
    width = max(spans[0][1] - spans[0][0], 1) if spans else 1
    return [[(n, min(hi, n), min(1.0, (min(hi, n) - lo) / width)) for n in path_lengths if n > lo] for lo, hi in spans]


def window_weights(path_lengths: Sequence[int], spans: Sequence[tuple[int, int]]) -> list[float]:
    """How much targeted work each depth window should take, relative to the others, for the
    estimate of windows not yet planned: per path reaching it, the share of a first-window width it
    covers (a strategy picks a fixed number of targets per path and window, fewer on a short tail)."""
    return [sum(share for *_, share in paths) for paths in _covered(path_lengths, spans)]


def window_tokens(path_lengths: Sequence[int], spans: Sequence[tuple[int, int]]) -> list[float]:
    """`window_weights` with each path's share weighted by the tokens a rollout forced at a position of the
    window generates after its forced token: about the path's length less the position's depth and one, on
    average over the positions the path covers. Divided by the weights: each window's tokens per rollout."""
    return [sum(share * (n - (lo + end - 1) / 2 - 1) for n, end, share in paths)
            for (lo, _), paths in zip(spans, _covered(path_lengths, spans), strict=True)]


class Phases:
    """The library's side of progress: phases of one run, reported to ``callback``.

    ``min_interval`` throttles the events of backend hooks (a decoding step can take a millisecond);
    starts, plans, steps and ends are always reported.
    """

    def __init__(self, callback: Callback | None = None, min_interval: float = 0.2):
        self.callback = callback or (lambda event: None)
        self.min_interval = min_interval
        self.started = time.monotonic()
        self.finals: list[PhaseProgress] = []
        self.loading = 0.0  # seconds spent loading models, in whichever phase first needed them

    def run_started(self, task: str, questions: int, available: int | None, teachers: int, out) -> None:
        self.callback(RunStarted(task, questions, available, teachers, str(out)))

    @contextlib.contextmanager
    def phase(self, name: str, backend=None, unit: str = "rollouts", budget: int | None = None,
              steps: Sequence[float] | None = None, rounds: bool = False,
              costs: Sequence[float] | None = None) -> Iterator[Phase]:
        """A phase; while it runs, ``backend`` (a counting wrapper with a ``phase`` slot) reports into it.
        ``rounds``: the phase plans its work round by round, so its total stays an estimate to the end.
        ``steps``: each step's share of the units; ``costs``: each step's tokens per unit, for the ETA."""
        ph = Phase(self, name, unit, budget, steps, rounds, costs)
        previous = getattr(backend, "phase", None)
        if backend is not None:
            backend.phase = ph
        ph.emit(force=True)
        try:
            yield ph
        finally:
            if backend is not None:
                backend.phase = previous
        ph.emit(final=True)
        self.finals.append(ph.last)

    def run_finished(self, out) -> None:
        self.callback(RunFinished(str(out), tuple(self.finals), time.monotonic() - self.started, self.loading))


# the command line's side ---------------------------------------------------------------------------


def _unit(unit: str, n: float) -> str:
    """``passes`` of a phase's count, ``pass`` for one."""
    return {"passes": "pass", "rollouts": "rollout", "samples": "sample", "trainings": "training", "paths": "path"}.get(unit, unit) if n == 1 else unit


def _count(n: float) -> str:
    return f"{n:,.0f}"


def _rate(per_second: float) -> str:
    """A rate: whole numbers from 10 up, two significant digits below (a slow phase is not "0/s")."""
    return _count(per_second) if per_second >= 10 else f"{per_second:.2g}"


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    minutes, s = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {s:02d} s"
    hours, m = divmod(minutes, 60)
    return f"{hours} h {m:02d} min"


def describe(ev: PhaseProgress, elapsed: float | None = None) -> str:
    """One line of a phase's progress: done/planned, rates, ETA and the share of the budget spent."""
    elapsed = ev.elapsed if elapsed is None else elapsed
    name = f"{ev.phase} ({ev.step})" if ev.step else ev.phase
    if ev.final:
        line = f"{ev.phase}: done, {_count(ev.done)} {_unit(ev.unit, ev.done)}"
        if ev.unit == "passes" and ev.rollouts:
            line += f", {_count(ev.rollouts)} rollouts"
        if ev.tokens:
            line += f", {_count(ev.tokens)} tokens"
        line += f" in {_duration(elapsed)}"
        if ev.done and elapsed > 0:
            line += f" ({_rate(ev.done / elapsed)} {ev.unit}/s)"
        return line + _budget(ev)
    total = ev.expected if ev.expected is not None else ev.planned
    projected = _projected(ev)
    estimated = projected or ev.rounds  # or later rounds, which no one counts before they are planned
    of = f"{'~' if estimated else ''}{_count(total)}"
    if not ev.done:  # a batch finishes its rollouts together: meanwhile its tokens are the progress
        line = (f"{name}: {'~' if projected else ''}{_count(total)} {_unit(ev.unit, total)} planned" + (" so far" if estimated else "")
                if total else f"{name}: planning")  # not "0 rollouts planned so far" while the first round is drawn up
        if ev.tokens and elapsed > 0:
            line += f", {_count(ev.tokens)} tokens generated ({_rate(ev.tokens / elapsed)} tokens/s)"
        return line + _budget(ev)
    line = f"{name}: {_count(ev.done)}/{of} {ev.unit}"
    if total:
        line += f" ({100 * ev.done / total:.0f}%)"
    if elapsed > 0 and ev.done:
        rate = ev.done / elapsed
        line += f", {_rate(rate)} {ev.unit}/s"
        if ev.tokens:
            line += f", {_rate(ev.tokens / elapsed)} tokens/s"
        if (left := eta(ev, elapsed)) is not None:
            line += f", ETA {'~' if estimated else ''}{_duration(left)}"
    return line + _budget(ev)


def _projected(ev: PhaseProgress) -> bool:
    """The phase's total counts later windows, estimated."""
    return ev.expected is not None and ev.expected > ev.planned


ETA_FROM = 0.01  # share of a phase's units done before its rate says anything of the rest (vLLM ramps up)


def eta(ev: PhaseProgress, elapsed: float | None = None) -> float | None:
    """Seconds the phase has left, ``elapsed`` seconds into it (``ev.elapsed`` when None): its estimated tokens
    left at its tokens/s so far where it estimates them (`Phase.tokens_left`), otherwise its units left at its
    units/s so far. None when it has nothing left, or has done less than `ETA_FROM` of its units."""
    elapsed = ev.elapsed if elapsed is None else elapsed
    total = ev.expected if ev.expected is not None else ev.planned
    if not ev.done or total <= ev.done or ev.done < ETA_FROM * total or elapsed <= 0:
        return None
    if ev.tokens_left is not None and ev.tokens and ev.tokens_left > 0:
        return ev.tokens_left / (ev.tokens / elapsed)
    return (total - ev.done) / (ev.done / elapsed)


def _budget(ev: PhaseProgress) -> str:
    if not ev.budget:
        return ""
    return f", {100 * ev.spent / ev.budget:.0f}% of the budget spent ({_count(ev.spent)}/{_count(ev.budget)})"


class _AboveBars(logging.Filter):
    """On a console log handler: writes the record with ``tqdm.write`` (which clears the bars' lines and draws
    them again below it) and keeps the handler from writing it through them. Each reporter removes its own,
    in whatever order reporters close."""

    def __init__(self, handler: logging.StreamHandler):
        super().__init__()
        self.handler = handler

    def filter(self, record: logging.LogRecord) -> bool:
        from tqdm import tqdm

        try:
            tqdm.write(self.handler.format(record), file=self.handler.stream)
        except Exception:  # as the handler's own emit would: logging never raises into the caller
            self.handler.handleError(record)
        return False

    @classmethod
    def install(cls, present: Sequence[tuple[logging.Handler, logging.Filter]] = ()) -> list[tuple[logging.Handler, logging.Filter]]:
        """One on each handler that writes to stdout or stderr, of the root logger and of every other logger
        configured so far (a library's own, such as vLLM's, which does not pass its records to the root),
        but those in ``present``."""
        have = {id(handler) for handler, _ in present}
        installed = []
        loggers = [logging.root, *(v for v in list(logging.Logger.manager.loggerDict.values()) if isinstance(v, logging.Logger))]
        for handler in (h for logger in loggers for h in logger.handlers):
            if (type(handler) is logging.StreamHandler and handler.stream in (sys.stdout, sys.stderr)
                    and id(handler) not in have):
                have.add(id(handler))
                handler.addFilter(above := cls(handler))
                installed.append((handler, above))
        return installed


class Reporter:
    """Renders progress events: tqdm bars on a terminal, plain lines otherwise, nothing when quiet.

    Plain lines go out at each phase's start and end and at least every ``interval`` seconds while a
    phase runs (a timer thread covers backend calls that report nothing for a while).
    """

    def __init__(self, quiet: bool = False, interval: float = 30.0, stream: TextIO | None = None,
                 tty: bool | None = None, preamble: Callable[[], list[str]] | None = None):
        self.quiet = quiet
        self.preamble = preamble  # lines written once, as the run starts (after it was checked)
        self.interval = interval
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.t0 = time.monotonic()
        self.bars: dict[str, Any] = {}
        self.finished: RunFinished | None = None
        self.runs: list[RunFinished] = []
        self._lock = threading.Lock()
        self._current: tuple[PhaseProgress, float] | None = None  # last event of the running phase, when received
        self._printed = time.monotonic()
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None
        # on a terminal, log lines go above the bars rather than through them
        self._above_bars = _AboveBars.install() if self.tty and not quiet else []

    # events ----------------------------------------------------------------------------------------

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunFinished):
            self.finished = event
            self.runs.append(event)
            return
        if self.quiet:
            return
        with self._lock:
            if isinstance(event, RunStarted):
                if self.preamble is not None:
                    preamble, self.preamble = self.preamble, None
                    self.stream.write("".join(f"{line}\n" for line in preamble()))
                self._line(run_started_line(event))
            elif self.tty:
                self._bar(event)
            else:
                self._plain(event)

    def _line(self, text: str) -> None:
        stamp = f"[{time.monotonic() - self.t0:7.1f}s] "
        if self.bars:
            from tqdm import tqdm

            tqdm.write(stamp + text, file=self.stream)
        else:
            print(stamp + text, file=self.stream, flush=True)
        self._printed = time.monotonic()

    def _plain(self, ev: PhaseProgress) -> None:
        now = time.monotonic()
        previous = self._current[0] if self._current else None
        self._current = None if ev.final else (ev, now)
        if ev.final:
            if ev.done or ev.planned:
                self._line(describe(ev))
            return
        first_work = ev.planned and (previous is None or previous.phase != ev.phase or not previous.planned)
        new_step = previous is not None and previous.phase == ev.phase and previous.step != ev.step and ev.planned
        if first_work or new_step or now - self._printed >= self.interval:
            self._line(describe(ev))
        self._start_timer()

    def _start_timer(self) -> None:
        if self._timer is None:
            self._timer = threading.Thread(target=self._beat, name="odiag-progress", daemon=True)
            self._timer.start()

    def _beat(self) -> None:
        """While a phase runs, a line at least every ``interval`` seconds, even if no event arrives
        (on a terminal: the bars' clocks keep moving)."""
        while not self._stop.wait(min(self.interval, 1.0) / 2):
            with self._lock:
                if self.tty:
                    for bar in self.bars.values():
                        bar.refresh()
                    continue
                if self._current is None or time.monotonic() - self._printed < self.interval:
                    continue
                ev, received = self._current
                if ev.planned:
                    self._line(describe(ev, ev.elapsed + time.monotonic() - received))

    def _bar(self, ev: PhaseProgress) -> None:
        from tqdm import tqdm

        bar = self.bars.get(ev.phase)
        total = ev.expected if ev.expected is not None else ev.planned
        if bar is None:
            if not ev.planned:  # nothing to do yet (or at all): no empty or pre-filled bar
                return
            self._above_bars += _AboveBars.install(self._above_bars)  # loggers configured since: vLLM's, as it loads
            bar = self.bars[ev.phase] = tqdm(
                total=total, desc=ev.phase, unit=f" {ev.unit}", file=self.stream, dynamic_ncols=True,
                leave=True, smoothing=0.1,
                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}, {rate_noinv_fmt}{postfix}]",
            )
        if ev.final:
            bar.total = ev.done
        elif total != bar.total:
            bar.total = total
        bar.set_description(f"{ev.phase} ({ev.step})" if ev.step else ev.phase, refresh=False)
        postfix = {}
        if not ev.final and (left := eta(ev)) is not None:  # the phase's own ETA: tqdm's would count units alike
            postfix["ETA"] = ("~" if _projected(ev) or ev.rounds else "") + _duration(left)
        if ev.tokens and ev.elapsed > 0:
            postfix["tok/s"] = _count(ev.tokens / ev.elapsed)
        if ev.budget:
            postfix["budget"] = f"{100 * ev.spent / ev.budget:.0f}%"
        bar.set_postfix(postfix, refresh=False)
        bar.update(ev.done - bar.n)
        self._start_timer()
        if ev.final:
            bar.close()
            del self.bars[ev.phase]

    # closing ---------------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the timer and close any open bar (an interrupted run)."""
        self._stop.set()
        if self._timer is not None:
            self._timer.join(timeout=2)
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()
        for handler, above in self._above_bars:
            handler.removeFilter(above)
        self._above_bars = []

    def closing_lines(self, results_at: str | None = None) -> list[str]:
        """Wall time, rollouts and tokens per phase of the run(s) reported, and where the results are."""
        return closing_lines(self.runs, results_at)


def run_started_line(ev: RunStarted) -> str:
    of = f" of {_count(ev.available)}" if ev.available is not None else ""
    teachers = f"{ev.teachers} {plural(ev.teachers, 'teacher')}"
    questions = f"{_count(ev.questions)}{of} {plural(ev.available or ev.questions, 'question')}"
    return f"odiag: diagnosing {questions} of {ev.task} with {teachers} -> {ev.out}"


def closing_lines(runs: Sequence[RunFinished], results_at: str | None = None) -> list[str]:
    if not runs:
        return [f"results: {results_at}"] if results_at else []
    lines = [f"{'phase':<20} {'wall':>10} {'rollouts':>12} {'tokens':>14}  other"]
    if (loading := sum(r.loading for r in runs)) >= 0.05:  # not the synthetic backend's instant
        lines.append(f"{'loading models':<20} {_duration(loading):>10} {0:>12} {0:>14}")
    for run in runs:
        for ev in run.phases:
            other = f"{_count(ev.done)} forward passes" if ev.unit == "passes" else ""
            lines.append(f"{ev.phase:<20} {_duration(ev.elapsed):>10} {_count(ev.rollouts):>12} {_count(ev.tokens):>14}  {other}".rstrip())
    wall = sum(r.elapsed for r in runs)
    rollouts = sum(ev.rollouts for r in runs for ev in r.phases)
    tokens = sum(ev.tokens for r in runs for ev in r.phases)
    lines.append(f"{'total (this run)':<20} {_duration(wall):>10} {_count(rollouts):>12} {_count(tokens):>14}")
    where = results_at or ", ".join(f"{r.out}/results.json" for r in runs)
    lines.append(f"results: {where}")
    return lines


__all__ = ["Callback", "Event", "OnDone", "Phase", "PhaseProgress", "Phases", "Reporter", "RunFinished", "RunStarted",
           "call", "window_weights"]
