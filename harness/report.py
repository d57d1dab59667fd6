"""A run's results as the terminal shows them: the headline algorithm by teacher first, as the
leaderboard does, then the other algorithms compactly; when a run has no decision point, one line
saying why, with the counts, instead of rows of nan."""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Mapping

from harness.core.gradients import TEACHER_FREE
from harness.leaderboard.merge import HEADLINE_ALGORITHM
from harness.wording import plural


def _num(x, signed: bool = True) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:+.3f}" if signed else f"{x:.3f}"


def _columns(text: str) -> int:
    """Terminal columns ``text`` takes: wide (East Asian) characters two, marks and format characters (combining
    accents, vowel signs, variation selectors, zero-width joiners) none; emoji sequences may take fewer."""
    return sum(0 if unicodedata.category(c) in ("Mn", "Me", "Cf") else 2 if unicodedata.east_asian_width(c) in "WF" else 1
               for c in text)


def _pad(text: str, width: int) -> str:
    """``text`` left-aligned in ``width`` terminal columns."""
    return text + " " * max(width - _columns(text), 0)


def _p(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.2g}" if x >= 1e-3 else f"{x:.1e}"


def no_decision_reason(results: Mapping) -> str:
    """Why a run (or a teacher) has no decision point, in one line with the counts."""
    counts = results.get("counts", {})
    questions = results.get("questions", [])
    only_correct = sum(str(q.get("note", "")).startswith("only correct") for q in questions)
    only_incorrect = sum(str(q.get("note", "")).startswith("only incorrect") for q in questions)
    # no path at all: every rollout truncated or unparseable, which incorrect_outcomes leaves out by default
    pathless = sum(str(q.get("note", "")).startswith("no paths") for q in questions)
    skipped = counts.get("skipped_nodes", {}) or {}
    cfg = results.get("config", {})
    n_min = counts.get("n_min") or cfg.get("n_min")  # the task's default applied, where the run stored it
    parts = [f"{len(questions)} {plural(len(questions), 'question')}"]
    if only_correct or only_incorrect:
        parts.append(f"{only_correct} with only correct and {only_incorrect} with only incorrect initial rollouts")
    if pathless:
        parts.append(f"{pathless} whose initial rollouts were all truncated or unparseable")
    below, equal = skipped.get("below_n_min", 0), skipped.get("equal_q", 0)
    parts.append(f"{below} {plural(below, 'node')} with a second child below n_min"
                 + (f"={n_min}" if n_min else "") + " visits")
    if equal:
        parts.append(f"{equal} with equal Q on every child")
    missing = skipped.get("missing_student_logprob", 0) + skipped.get("missing_teacher_logprob", 0)
    if missing:
        parts.append(f"{missing} without a scored log-probability")
    # what brings a child to n_min visits: settle always tries, within the budget
    grow = {"survey": "budget or survey_visits", "settle": "budget"}.get(cfg.get("strategy"), "budget or n_target")
    hint = (f"raise {grow}, or lower n_min" if below else
            "raise max_new_tokens, or count truncated and unparseable rollouts as incorrect with incorrect_outcomes"
            if pathless else "use questions the student sometimes gets right")
    return f"no decision point: {', '.join(parts)} ({hint})"


def _passes(counts: Mapping) -> str:
    """The forward passes a run made, teachers', the student's and fills apart: they add up to the closing
    table's counts (a context's sampled solutions are its own row there, not the tree's)."""
    teacher, student = counts["teacher_forward_passes"], counts.get("student_forward_passes", 0)
    fill = counts.get("fill_forward_passes", 0)
    parts = [f"{n:,} {who}" for n, who in ((teacher, "teacher"), (student, "student"), (fill, "fill")) if n or who == "teacher"]
    who = parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} and {parts[-1]}"
    return f"{who} forward {plural(teacher + student + fill, 'pass', 'passes')}"


TIED = "\u2248"  # after a rank: tied with another teacher (CIs overlap), as the leaderboard page marks it


def summary_table(results: Mapping) -> str:
    """The terminal summary of a run's results."""
    c = results["counts"]
    footer = (
        f"{c['questions']} {plural(c['questions'], 'question')}, {c['paths']} {plural(c['paths'], 'path')}, "
        f"{c['decision_points']} decision {plural(c['decision_points'], 'point')}, "
        f"{c['rollouts']:,} {plural(c['rollouts'], 'rollout')}, "
        f"{c['tokens_generated']:,} {plural(c['tokens_generated'], 'token')} generated in the tree, "
        f"{_passes(c)}"
    )
    if not c.get("decision_points"):
        return f"{no_decision_reason(results)}\n\n{footer}"
    rows = results["teachers"]
    configured = list(results.get("config", {}).get("algorithms") or [])
    algorithms = [a for a in dict.fromkeys([*configured, *(r["algorithm"] for r in rows)]) if any(r["algorithm"] == a for r in rows)]
    headline = HEADLINE_ALGORITHM if HEADLINE_ALGORITHM in algorithms else algorithms[0]
    tw = max(22, *(_columns(r["teacher"]) for r in rows))  # the teacher column holds its longest name
    lines = [f"{headline}: teachers by mean gradient alignment (95% CI over questions)",
             f"{'rank':>4}  {'teacher':<{tw}} {'alignment':>9} {'95% CI':>18}  {'incorrect-correct (p)':>21}  "
             f"{'teacher adv.':>12} {'n_q':>4}"]
    head = sorted((r for r in rows if r["algorithm"] == headline),
                  key=lambda r: (r.get("rank") is None, r.get("rank") or 0, r["teacher"]))
    for r in head:
        a = r.get("alignment") or {}
        if not r.get("n_decision_points"):
            lines.append(f"{'-':>4}  {_pad(r['teacher'], tw)} no decision point (skipped: see results.json questions[].skipped_teachers)")
            continue
        ci = a.get("ci95") or [None, None]
        imc = r.get("incorrect_minus_correct") or {}
        ta = (r.get("teacher_advantage") or {}).get("mean")
        rank = f"{r['rank']}{TIED if r.get('tied_with') else ''}" if r.get("rank") else "-"
        lines.append(
            f"{rank:>4}  {_pad(r['teacher'], tw)} {_num(a.get('mean')):>9} "
            f"{'[' + _num(ci[0]) + ', ' + _num(ci[1]) + ']':>18}  "
            f"{_num(imc.get('mean')) + ' (' + _p(imc.get('p_paired')) + ')':>21}  {_num(ta):>12} {a.get('n_questions', 0):>4}"
        )
    if any(r.get("rank") and r.get("tied_with") for r in head):
        lines.append(f"{TIED}: its 95% CI overlaps another teacher's (or it has none): the order between them is not resolved")
    others = [a for a in algorithms if a != headline]
    if others:
        by = {(r["teacher"], r["algorithm"]): (r.get("alignment") or {}).get("mean") for r in rows}
        teachers = [r["teacher"] for r in head]
        # an algorithm that never reads the teacher (Dr. GRPO) has one number: shown once
        same = [a for a in others if len({_num(by.get((t, a))) for t in teachers}) == 1 and len(teachers) > 1]
        varying = [a for a in others if a not in same]
        if varying:
            width = max(10, *(len(a) for a in varying))
            lines += ["", "other algorithms, mean alignment:",
                      f"{'':4}  {'teacher':<{tw}} " + " ".join(f"{a:>{width}}" for a in varying)]
            for t in teachers:
                lines.append(f"{'':4}  {_pad(t, tw)} " + " ".join(f"{_num(by.get((t, a))):>{width}}" for a in varying))
        for a in same:  # the same for every teacher: by construction (Dr. GRPO) or as measured here
            why = "it does not read the teacher" if a in TEACHER_FREE else "it reads the teacher; here every teacher scored alike"
            lines.append(f"{a}: {_num(by.get((teachers[0], a)))} for every teacher ({why})")
    return "\n".join([*lines, "", footer])
