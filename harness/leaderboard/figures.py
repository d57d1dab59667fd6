"""The leaderboard's figures (matplotlib, object API, no global state), each saved as SVG and PNG.

Per task x student group:
- ``correct-vs-incorrect``: mean alignment on correct and on incorrect paths per teacher, one panel
  per algorithm, with t CIs over questions and the paired p-value (the paper's Figure 3);
- ``depth``: alignment by exponential depth window ``[0,w), [w,3w), ...`` (SPEC §4);
- ``n-actions``: alignment against ``|A(s)|`` (with two actions it is ±1 by construction, SPEC §3);
- ``divergence``: each divergence against the headline algorithm's alignment, node by node, with the
  within-path Spearman correlation of SPEC §5 in each panel.
Per task: ``ranking``, teachers by mean alignment with 95% CIs, one panel per student (Figure 4);
the band is the leader's CI, so every interval that crosses it is tied with the leader.

Depth and ``|A(s)|`` figures average per path first and give t CIs over paths, so a long path does
not outvote a short one. Output is deterministic (fixed SVG hash salt, no dates).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from harness.core.stats import DIVERGENCES, t_ci
from harness.leaderboard.merge import Run, teacher_labels
from harness.wording import plural, shell_word

log = logging.getLogger(__name__)

CORRECT, INCORRECT = "#1b9e77", "#d95f02"
DIVERGENCE_NAMES = {"kl": "KL(π_T‖π) forward", "reverse_kl": "KL(π‖π_T) reverse", "js": "Jensen–Shannon", "tv": "total variation",
                    "prob_cosine": "cosine(π, π_T)"}
MAX_SCATTER = 4000  # points per teacher in a scatter panel (a seeded sample beyond that)
N_ACTIONS_CAP = 6  # |A(s)| of 6 or more share one bin
LEGEND_COLUMNS = 4  # entries per row of a figure's legend
GLYPH_MISSING = re.compile(r"Glyph \d+ .* missing from (current )?font")  # matplotlib's warning, once per character
MISSING_GLYPHS: set[str] = set()  # of this build (emptied as a build starts): said once
# an SVG figure past this size is linked, and its PNG shown: many teachers and merged runs make SVGs of 10 MB
# and more (every glyph an outline, every point a path), which took a page of ten runs 20 s to load
SVG_SHOWN_BYTES = 2_000_000
PANEL_LEGEND_TEACHERS = 8  # beyond this many teachers a figure's panels share one legend and lay out one per row


@dataclasses.dataclass(frozen=True)
class FigureFile:
    """One saved figure: its stem under figures/, what it shows, and which group it belongs to."""

    stem: str  # figures/<stem>.svg and figures/<stem>.png
    title: str
    caption: str
    group: str | None  # a group id, or None for a per-task figure
    task: str
    shown: str = "svg"  # the file the page shows: the PNG where the SVG is too heavy for a page to load quickly


def _plain(text) -> str:
    """Text matplotlib draws as written: ``$`` would otherwise start mathtext (names are user data)."""
    return str(text).replace("$", r"\$")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def teacher_colours(labels: Sequence[str]) -> dict[str, str]:
    """A stable colour per teacher label (tab10, then tab20's lighter half, then hues a golden angle apart),
    shared by every figure and the table; no two labels share one."""
    from matplotlib import colormaps
    from matplotlib.colors import hsv_to_rgb

    palette = [colormaps["tab10"](i)[:3] for i in range(10)] + [colormaps["tab20"](i)[:3] for i in range(1, 20, 2)]
    hexes = ["#%02x%02x%02x" % tuple(int(255 * c) for c in rgb) for rgb in palette]
    i = 0
    while len(hexes) < len(set(labels)):
        rgb = hsv_to_rgb((i * 0.618034 % 1.0, 0.55 + 0.3 * (i % 2), 0.85 - 0.25 * (i // 2 % 2)))
        if (code := "#%02x%02x%02x" % tuple(int(255 * c) for c in rgb)) not in hexes:
            hexes.append(code)
        i += 1
    return {label: hexes[i] for i, label in enumerate(sorted(set(labels)))}


def _nodes(runs: Sequence[Run], labels: dict[tuple[str, str], str]) -> dict[str, np.ndarray]:
    """The group's node tables stacked, with a ``label`` column and ``question_key`` and ``path_key``
    columns unique across runs: integers numbering the keys ``run\0question`` and ``run\0question\0path``
    in their sorted order (a string per row took most of a large group's memory here)."""
    cols: dict[str, list[np.ndarray]] = {}
    keys: dict[str, list] = {"question_key": [], "path_key": []}
    for run in runs:
        n = run.nodes
        questions, question_N = np.unique(n["question_id"], return_inverse=True)
        pairs, path_N = np.unique(np.stack([question_N.reshape(-1), np.asarray(n["path_id"], np.int64)]), axis=1,
                                  return_inverse=True)
        names = {
            "question_key": ([f"{run.id}\x00{q}" for q in questions], question_N.reshape(-1)),
            "path_key": ([f"{run.id}\x00{questions[q]}\x00{p}" for q, p in pairs.T], path_N.reshape(-1)),
        }
        for k, v in names.items():
            keys[k].append(v)
        extra = {
            "label": np.array([labels[(run.id, t)] for t in n["teacher"]], dtype=object),
            "window_width": np.full(len(n["teacher"]), run.results["config"].get("window", 50)),
        }
        for k, v in {**n, **extra}.items():
            cols.setdefault(k, []).append(np.asarray(v))
    out = {k: np.concatenate(v) for k, v in cols.items()}
    for k, parts in keys.items():  # each run's keys numbered in the sorted order of all runs' keys
        _, code = np.unique(np.array([name for names, _ in parts for name in names], dtype=object), return_inverse=True)
        starts = np.cumsum([0] + [len(names) for names, _ in parts])
        out[k] = np.concatenate([code.reshape(-1)[start + index] for (_, index), start in zip(parts, starts, strict=False)]
                                or [np.zeros(0, np.int64)])
    return out


def depth_window(position: np.ndarray, width: np.ndarray) -> np.ndarray:
    """Index j of the window ``[(2^j - 1) w, (2^(j+1) - 1) w)`` that holds each position (SPEC §4)."""
    return np.floor(np.log2(np.asarray(position, float) / np.asarray(width, float) + 1)).astype(int)


def _window_label(j: int, w: int) -> str:
    return f"[{(2**j - 1) * w}, {(2 ** (j + 1) - 1) * w})"


def _rows_by(nodes: dict, *keys: str) -> dict[tuple, np.ndarray]:
    """The row indices of ``nodes`` for each combination of ``keys``' values that occurs, in row order: one
    pass over the table, however many teachers (a mask per teacher over all of them grows with their square)."""
    codes, columns = np.zeros(len(nodes[keys[0]]), np.int64), []
    if not codes.size:
        return {}
    for k in keys:
        values, inverse = np.unique(nodes[k], return_inverse=True)
        codes, columns = codes * len(values) + inverse.reshape(-1), [*columns, values]
    order = np.argsort(codes, kind="stable")
    distinct, starts = np.unique(codes[order], return_index=True)
    out = {}
    for code, rows in zip(distinct.tolist(), np.split(order, starts[1:]), strict=True):
        key = []
        for values in reversed(columns):
            code, r = divmod(code, len(values))
            key.append(values[r].item() if hasattr(values[r], "item") else values[r])
        out[tuple(reversed(key))] = rows
    return out


def _by_bin(nodes: dict, mask: np.ndarray, bins: np.ndarray, values: Sequence[int]):
    """Mean alignment per bin and the node count, for each value: nodes averaged per path, paths per
    question, with a t CI over questions (SPEC §5: the paths of one question are not independent),
    cut to [-1, 1]."""
    out = []
    for b in values:
        sel = mask & (bins == b) & np.isfinite(nodes["alignment"].astype(float))
        paths, first, inv = np.unique(nodes["path_key"][sel], return_index=True, return_inverse=True)
        per_path = np.bincount(inv, nodes["alignment"][sel].astype(float), len(paths)) / np.bincount(inv, minlength=len(paths))
        questions, of_path = np.unique(nodes["question_key"][sel][first], return_inverse=True)
        ci = t_ci(np.bincount(of_path, per_path, len(questions)) / np.bincount(of_path, minlength=len(questions)))
        lo, hi = np.clip([ci.lo, ci.hi], -1.0, 1.0)  # a cosine's mean lies in [-1, 1], as results.json's intervals
        out.append((ci.mean, float(lo), float(hi), int(sel.sum())))
    return out


def _panels(n: int, width: float = 4.2, height: float = 3.2, ncols: int = 3, legend: int = 0):
    """``n`` panels, room below them for a legend of ``legend`` entries (`_legend`'s rows of four)."""
    from matplotlib.figure import Figure

    ncols = min(n, ncols)
    nrows = -(-n // ncols)
    rows = -(-legend // LEGEND_COLUMNS)  # a legend row beyond the first takes room of its own
    fig = Figure(figsize=(width * ncols, height * nrows + 0.6 + 0.2 * max(rows - 1, 0)), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _style(ax, ylabel: str | None = "alignment") -> None:
    ax.axhline(0, color="#888888", lw=0.8, zorder=0)
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="y", color="#e6e6e6", lw=0.6)
    ax.set_axisbelow(True)
    if ylabel:
        ax.set_ylabel(ylabel)


def _legend(fig, ax) -> None:
    """One legend for all panels, below them, where it covers no data."""
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), LEGEND_COLUMNS), fontsize=8, frameon=False)


def _err(mean, lo, hi):
    """Error-bar half-widths from an interval; zero where the interval is undefined, or where a mean of cosines
    rounded past ±1 (−1 − 2⁻⁵², SPEC §3's cosine in floating point) lies outside its interval cut to [−1, 1]."""
    mean, lo, hi = (np.asarray(x, float) for x in (mean, lo, hi))
    half = np.vstack([np.nan_to_num(mean - lo), np.nan_to_num(hi - mean)])
    return np.where((half < 0) & (half > -1e-12), 0.0, half)  # an interval truly below its mean stays an error


def _v(stat: dict | None, key: str = "mean") -> float:
    if not stat:
        return float("nan")
    if key == "mean":
        return float("nan") if stat.get("mean") is None else float(stat["mean"])
    ci = stat.get("ci95") or [None, None]
    x = ci[0] if key == "lo" else ci[1]
    return float("nan") if x is None else float(x)


def _save(fig, out: Path, stem: str) -> None:
    """``stem``.svg and .png, each whole or not at all (a page never links a half-written figure)."""
    from harness.rundir import move_into_place

    move_into_place(staged_figure(fig, out, stem))


def staged_figure(fig, out: Path, stem: str) -> dict[Path, Path]:
    """``stem``.svg and .png written whole under temporary names beside them (final path: temporary one), for the
    caller to move into place with ``os.replace`` together with what they go with."""
    from matplotlib import rc_context

    from harness.rundir import staged

    files: dict[Path, Path] = {}
    try:
        with rc_context({"svg.hashsalt": "odiag", "svg.fonttype": "path"}), _glyphs_missing():
            files[out / f"{stem}.svg"] = staged(out / f"{stem}.svg", lambda f: fig.savefig(f, format="svg", metadata={"Date": None}))
            files[out / f"{stem}.png"] = staged(out / f"{stem}.png",
                                                lambda f: fig.savefig(f, format="png", dpi=110, metadata={"Software": None}))
    except BaseException:
        for tmp in files.values():
            tmp.unlink(missing_ok=True)
        raise
    return files


@contextlib.contextmanager
def _glyphs_missing():
    """matplotlib's warning for each character its font cannot draw (a teacher named in Chinese: one per
    glyph and figure; a traceback under PYTHONWARNINGS=error) becomes one log line per leaderboard build;
    every other warning keeps the user's filters."""
    with warnings.catch_warnings():
        warnings.filterwarnings("always", message=GLYPH_MISSING.pattern, category=UserWarning)
        shown = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if not GLYPH_MISSING.match(str(message)):
                return shown(message, category, filename, lineno, file, line)
            if not MISSING_GLYPHS:
                log.warning("a teacher or task name has characters the figures' font cannot draw (drawn as boxes in "
                            "the figures; the page shows them as written)")
            MISSING_GLYPHS.add(str(message))

        warnings.showwarning = show
        yield


def _fmt_p(p) -> str:
    if p is None or not np.isfinite(p):
        return "p n/a"
    return f"p={p:.2g}" if p >= 1e-3 else "p<0.001"


def correct_vs_incorrect(entries: list[dict], group: dict, colours: dict[str, str]):
    """Figure 3: alignment on correct vs incorrect paths, per teacher, one panel per algorithm."""
    teachers = group["teachers"]
    many = len(teachers) > PANEL_LEGEND_TEACHERS  # panels one per row, as wide as their teachers need
    fig, axes = _panels(len(group["algorithms"]), width=max(4.2, 0.3 * len(teachers) + 1.0), ncols=1 if many else 3)
    x = np.arange(len(teachers))
    for ax, algorithm in zip(axes, group["algorithms"], strict=True):
        rows = {e["label"]: e for e in entries if e["algorithm"] == algorithm}
        for offset, key, colour, name in ((-0.2, "alignment_correct", CORRECT, "correct paths"),
                                          (0.2, "alignment_incorrect", INCORRECT, "incorrect paths")):
            stats = [rows.get(t, {}).get(key) for t in teachers]
            mean = [_v(s) for s in stats]
            ax.bar(x + offset, np.nan_to_num(mean), 0.38, color=colour, label=name,
                   yerr=_err(mean, [_v(s, "lo") for s in stats], [_v(s, "hi") for s in stats]),
                   error_kw={"lw": 0.9, "capsize": 2})
        for i, t in enumerate(teachers):
            diff = rows.get(t, {}).get("incorrect_minus_correct") or {}
            ax.annotate(_fmt_p(diff.get("p_paired")), (i, 1.02), ha="center", va="bottom", fontsize=7,
                        xycoords=("data", "axes fraction"), color="#444444", rotation=90 if many else 0)
        _style(ax)
        ax.set_xticks(x, [_plain(t) for t in teachers], rotation=25 if len(teachers) > 3 else 0, ha="right" if len(teachers) > 3 else "center",
                      fontsize=8)
        ax.set_title(algorithm, fontsize=10, pad=40 if many else 14)
        ax.set_ylim(-1.05, 1.05)
    _legend(fig, axes[0])
    fig.suptitle(f"Alignment on correct vs incorrect paths — {_plain(group['task'])}, student {_plain(group['student'])}\n"
                 "(bars: mean over the questions with such paths, 95% t CI; p: paired t-test of incorrect − correct "
                 "over the questions with both)", fontsize=10)
    return fig


def ranking(entries: list[dict], groups: list[dict], colours: dict[str, str]):
    """Figure 4: teachers ranked by mean alignment (headline algorithm), one panel per student."""
    fig, axes = _panels(len(groups), width=6.0, height=0.45 * max(len(g["teachers"]) for g in groups) + 1.4, ncols=2)
    for ax, group in zip(axes, groups, strict=True):
        algorithm = group["headline_algorithm"]
        rows = [e for e in entries if (e["task"], e["student"], e["algorithm"]) == (group["task"], group["student"], algorithm)
                and e.get("alignment")]
        rows.sort(key=lambda e: -_v(e["alignment"]) if np.isfinite(_v(e["alignment"])) else np.inf)
        y = np.arange(len(rows))[::-1]
        if rows and np.isfinite(_v(rows[0]["alignment"], "lo")):
            ax.axvspan(_v(rows[0]["alignment"], "lo"), _v(rows[0]["alignment"], "hi"), color="#dde8f3", zorder=0,
                       label="leader's 95% CI")
        for yi, e in zip(y, rows, strict=True):
            a = e["alignment"]
            ax.errorbar(_v(a), yi, xerr=_err([_v(a)], [_v(a, "lo")], [_v(a, "hi")]), fmt="o",
                        color=colours.get(e["label"], "#333333"), capsize=3, lw=1.2)
            tie = " ≈" if rows[0]["key"] in e["tied_with"] else ""
            ax.annotate(f"#{e['rank']}{tie}" if e["rank"] is not None else "–", (1.0, yi), xycoords=("axes fraction", "data"), xytext=(4, 0),
                        textcoords="offset points", va="center", fontsize=8)
        ax.set_yticks(y, [_plain(e["label"]) for e in rows], fontsize=8)
        ax.set_ylim(-0.6, max(len(rows), 1) - 0.4)
        ax.axvline(0, color="#888888", lw=0.8, zorder=0)
        ax.spines[["top", "right"]].set_visible(False)
        ax.set_xlabel(f"mean alignment ({algorithm})")
        ax.set_title(f"student {_plain(group['student'])}", fontsize=10)
    if axes[0].get_legend_handles_labels()[0]:  # no leader's CI (an undefined alignment): no legend
        axes[0].legend(fontsize=8, loc="lower right", frameon=False)
    fig.suptitle(f"Teacher ranking — {_plain(groups[0]['task'])}\n(mean alignment over questions, 95% t CI; ≈: tied with the leader)",
                 fontsize=10)
    return fig


def _binned(group: dict, nodes: dict, colours: dict[str, str], bins: np.ndarray, values: list[int],
            tick_labels: list[str], xlabel: str, title: str):
    """Mean alignment per bin, one line per teacher and one panel per algorithm; n: nodes, all teachers."""
    teachers = group["teachers"]
    fig, axes = _panels(len(group["algorithms"]), legend=len(teachers))
    x = np.arange(len(values))
    step = min(0.08, 0.6 / max(len(teachers) - 1, 1))  # the teachers of a bin side by side, within its width
    rows = _rows_by(nodes, "algorithm", "label")
    none = np.zeros(0, np.int64)
    for ax, algorithm in zip(axes, group["algorithms"], strict=True):
        for i, t in enumerate(teachers):
            idx = rows.get((algorithm, t), none)
            part = {k: nodes[k][idx] for k in ("alignment", "path_key", "question_key")}
            stats = _by_bin(part, np.ones(len(idx), bool), bins[idx], values)
            mean, lo, hi, count = (np.array(c, float) for c in zip(*stats, strict=True))
            shift = (i - (len(teachers) - 1) / 2) * step
            ax.errorbar(x + shift, mean, yerr=_err(mean, lo, hi), fmt="-o", ms=4, lw=1.2, capsize=2,
                        color=colours[t], label=_plain(t))
            counts = count if i == 0 else counts + count
        _style(ax)
        ax.set_xticks(x, [f"{lab}\nn={int(c)}" for lab, c in zip(tick_labels, counts, strict=True)], fontsize=8)
        ax.set_xlim(-0.5, len(values) - 0.5)
        ax.set_xlabel(xlabel, fontsize=9)
        ax.set_title(algorithm, fontsize=10)
        ax.set_ylim(-1.05, 1.05)
    _legend(fig, axes[0])
    fig.suptitle(f"{title} — {_plain(group['task'])}, student {_plain(group['student'])}", fontsize=10)
    return fig


def by_depth(group: dict, nodes: dict, colours: dict[str, str]):
    """Alignment by depth window, per teacher, one panel per algorithm."""
    bins = depth_window(nodes["position"], nodes["window_width"])
    values = sorted(set(bins.tolist()))
    width = int(nodes["window_width"][0])
    return _binned(group, nodes, colours, bins, values, [_window_label(j, width) for j in values],
                   "response positions", "Alignment by depth window (mean over questions, 95% t CI)")


def by_n_actions(group: dict, nodes: dict, colours: dict[str, str]):
    """Alignment against |A(s)|, per teacher, one panel per algorithm."""
    bins = np.minimum(nodes["n_actions"].astype(int), N_ACTIONS_CAP)
    values = sorted(set(bins.tolist()))
    labels = [f"{v}+" if v == N_ACTIONS_CAP else str(v) for v in values]
    return _binned(group, nodes, colours, bins, values, labels, "|A(s)| (children with enough visits)",
                   "Alignment vs |A(s)| (|A(s)| = 2 gives ±1 by construction)")


def divergence_scatter(group: dict, entries: list[dict], nodes: dict, colours: dict[str, str], seed: int = 0):
    """Each divergence against alignment (headline algorithm), with the within-path correlation."""
    algorithm = group["headline_algorithm"]
    many = len(group["teachers"]) > PANEL_LEGEND_TEACHERS  # one legend of names below, not one per panel with ρ
    fig, axes = _panels(len(DIVERGENCES), width=4.4, height=3.4, legend=len(group["teachers"]) if many else 0)
    rows = {e["label"]: e for e in entries if e["algorithm"] == algorithm}
    by_teacher = _rows_by(nodes, "algorithm", "label")
    rng = np.random.default_rng(seed)
    for ax, d in zip(axes, DIVERGENCES, strict=True):
        for t in group["teachers"]:
            idx = by_teacher.get((algorithm, t), np.zeros(0, np.int64))
            if idx.size > MAX_SCATTER:
                idx = np.sort(rng.choice(idx, MAX_SCATTER, replace=False))
            rho = ((rows.get(t, {}).get("divergence_correlations") or {}).get(d) or {}).get("spearman") or {}
            ci = rho.get("ci95") or [None, None]
            note = "ρ n/a" if rho.get("mean") is None else f"ρ={rho['mean']:+.2f}" + (
                f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if None not in ci else "") + f", {rho.get('n_paths', 0)} paths"
            ax.scatter(nodes[d][idx].astype(float), nodes["alignment"][idx].astype(float), s=7, alpha=0.55,
                       color=colours[t], label=_plain(t if many else f"{t}: {note}"), rasterized=idx.size > 500,
                       linewidths=0)
        _style(ax)
        ax.set_xlabel(DIVERGENCE_NAMES.get(d, d), fontsize=9)
        ax.set_ylim(-1.1, 1.1)
        if not many:
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False, markerscale=1.5)
    if many:
        _legend(fig, axes[0])
    rho = ("ρ of each teacher: divergence_correlations in leaderboard.json" if many else
           "ρ: within-path Spearman, mean over questions with 95% t CI")
    fig.suptitle(f"Divergence vs alignment ({algorithm}) — {_plain(group['task'])}, student {_plain(group['student'])}; "
                 f"{rho}", fontsize=10)
    return fig


def write_figures(board: dict, runs: Sequence[Run], out: Path) -> list[FigureFile]:
    """Draw every figure of the leaderboard into ``out`` (SVG and PNG); stale figures are removed."""
    out.mkdir(parents=True, exist_ok=True)
    for old in list(out.glob("*.svg")) + list(out.glob("*.png")):
        old.unlink()
    labels = teacher_labels(runs)
    colours = teacher_colours({e["label"] for e in board["entries"]})
    made: list[FigureFile] = []

    def save(fig, stem, title, caption, group, task):
        _save(fig, out, stem)
        shown = "svg" if (out / f"{stem}.svg").stat().st_size <= SVG_SHOWN_BYTES else "png"
        made.append(FigureFile(stem, title, caption, group, task, shown))

    for task in sorted({g["task"] for g in board["groups"]}):
        groups = [g for g in board["groups"] if g["task"] == task]
        save(ranking(board["entries"], groups, colours), f"{_slug(task)}--ranking", "Teacher ranking",
             "Teachers by mean alignment of the headline algorithm, one panel per student; the band is the "
             "leader's 95% CI, so any interval crossing it is tied with the leader.", None, task)
        for g in groups:
            entries = [e for e in board["entries"] if (e["task"], e["student"]) == (g["task"], g["student"])]
            nodes = _nodes([r for r in runs if r.id in g["runs"]], labels)
            stem = g["id"]
            save(correct_vs_incorrect(entries, g, colours), f"{stem}--correct-vs-incorrect",
                 "Correct vs incorrect paths",
                 "Mean alignment on correct and on incorrect paths per teacher; p is the paired t-test over "
                 "questions that have both.", g["id"], task)
            if not len(nodes["position"]):  # no decision point in these runs: nothing to draw per node
                continue
            save(by_depth(g, nodes, colours), f"{stem}--depth", "Alignment by depth",
                 "Mean alignment in each exponential depth window, averaged per path first; n counts decision "
                 "points x teachers.", g["id"], task)
            save(by_n_actions(g, nodes, colours), f"{stem}--n-actions", "Alignment vs |A(s)|",
                 "Mean alignment by the number of children with enough visits (with two it is ±1 by "
                 "construction); n counts decision points x teachers.", g["id"], task)
            save(divergence_scatter(g, entries, nodes, colours), f"{stem}--divergence", "Divergence vs alignment",
                 "Every decision point of the headline algorithm; ρ is the within-path Spearman correlation "
                 "(SPEC §5) of paths with at least 5 decision points, averaged per question, then over questions.", g["id"], task)
    return made


ALGORITHM_MARKERS = {"gkd": "o", "forward_kl": "s", "jsd": "^"}


def validation_figure(validation: dict):
    """``odiag validate``: each teacher x algorithm's mean alignment (x, 95% t CI over questions) against
    its training gain over the do-nothing control (y, 95% CI over seeds and held-out
    questions), with the Dr. GRPO baseline's gain as a band and Spearman's ρ of every predictor."""
    from matplotlib.figure import Figure

    rows = [r for r in validation["rows"] if r["kind"] == "distillation"]
    colours = teacher_colours({r["teacher"] for r in rows})
    fig = Figure(figsize=(9.5, 6.0), layout="constrained")
    ax, note_ax = fig.subplots(2, 1, height_ratios=[5, 1])  # the correlations below the data, never over it
    note_ax.axis("off")
    for r in validation["rows"]:
        if r["kind"] == "baseline":
            g = r["gain"]
            ax.axhspan(_v(g, "lo"), _v(g, "hi"), color="#eeeeee", zorder=0, label=f"{r['algorithm']} (no teacher), 95% CI")
            ax.axhline(_v(g), color="#999999", lw=1.0, ls="--", zorder=0)
    for r in rows:
        a, g = r["alignment"], r["gain"]
        ax.errorbar(_v(a), _v(g), xerr=_err([_v(a)], [_v(a, "lo")], [_v(a, "hi")]),
                    yerr=_err([_v(g)], [_v(g, "lo")], [_v(g, "hi")]), fmt=ALGORITHM_MARKERS.get(r["algorithm"], "D"),
                    color=colours[r["teacher"]], capsize=2, lw=1.0, ms=6, label=_plain(f"{r['teacher']} / {r['algorithm']}"))
    ax.axhline(0, color="#444444", lw=0.8, zorder=0)
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(color="#e6e6e6", lw=0.6)
    ax.set_axisbelow(True)
    ax.set_xlabel("mean alignment (diagnostic, 95% t CI over questions)")
    ax.set_ylabel("accuracy gain over the control (95% CI, seeds x questions)")
    notes = []
    for name, c in validation.get("correlation", {}).items():
        lo, hi = c["ci95"]
        rho = "n/a" if c["spearman"] is None else f"{c['spearman']:+.2f}"
        interval = "" if lo is None or hi is None else f" [{lo:+.2f}, {hi:+.2f}]"
        notes.append(f"ρ(gain, {name}) = {rho}{interval}")
    for algorithm, corr in validation.get("correlation_by_algorithm", {}).items():
        c = corr["alignment"]
        lo, hi = c["ci95"]
        interval = "" if lo is None or hi is None else f" [{lo:+.2f}, {hi:+.2f}]"
        notes.append(f"within {algorithm}: ρ(gain, alignment) = " + ("n/a" if c["spearman"] is None else f"{c['spearman']:+.2f}") + interval)
    note_ax.text(0.0, 1.0, "\n".join(notes) or "fewer than 3 pairs: no ρ", transform=note_ax.transAxes, va="top", fontsize=8)
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize=7, frameon=False)
    run = validation["run"]
    s = validation["settings"]
    ax.set_title(f"Does alignment predict training? {_plain(run['task'])}, student {_plain(run['student'])}\n"
                 f"({s['steps']} steps x {s['prompts_per_step'] * s['samples_per_prompt']} samples, {s['seeds']} {plural(s['seeds'], 'seed')}, "
                 f"{len(validation['questions']['heldout'])} held-out questions; Spearman ρ with bootstrap 95% CI)", fontsize=9)
    return fig


def write_validation_figures(runs: Sequence[Run], out: Path) -> list[dict]:
    """The ``odiag validate`` figure of every run that has a ``validation.json``, saved under ``out``;
    returns, per such run, ``{"run": id, "stem": figure stem, "validation": the JSON}`` for the page."""
    from harness.config import ConfigError
    from harness.safeio import read_json

    made = []
    for run in runs:
        path = Path(run.path) / "validation.json"
        if not path.is_file():
            continue
        try:
            validation = read_json(path)
            problem = _stale(validation, run.results)
            if problem is None:
                figure = validation_figure(validation)
        except ConfigError as exc:
            problem = str(exc).removeprefix(f"{path}: ")
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            problem = f"malformed ({type(exc).__name__}: {exc})"
        if problem is not None:  # never a panel of other numbers than the run's
            log.warning("%s: %s; its panel is left out (odiag validate %s makes a current one)", path, problem,
                        shell_word(run.path))
            continue
        stem = f"{run.id}--validation"  # run ids are unique and file-safe; a slug of them need not be
        _save(figure, out, stem)
        made.append({"run": run.id, "stem": stem, "validation": validation})
    return made


def _stale(validation: object, results: dict) -> str | None:
    """Why ``validation`` does not validate ``results`` as they are now, or None when it does: another
    run or settings (config hash), or a teacher added, dropped or rescored since (its alignment)."""
    if not isinstance(validation, dict) or validation.get("schema_version") != "odiag.validation/1":
        return "not an odiag.validation/1 file"
    if (validation.get("run") or {}).get("config_hash") != results.get("config_hash"):
        return "it validated other settings of the run (config hash)"
    now = {(r["teacher"], r["algorithm"]): (r.get("alignment") or {}).get("mean") for r in results["teachers"]}
    for r in validation["rows"]:
        if r["kind"] == "distillation" and now.get((r["teacher"], r["algorithm"]), "absent") != r["alignment"]["mean"]:
            return f"teacher {r['teacher']!r} ({r['algorithm']}) has another alignment in the run now (added, dropped or rescored since)"
    return None
