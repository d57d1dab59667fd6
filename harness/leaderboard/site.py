"""The static leaderboard site: one ``index.html`` that works from ``file://`` and any static host.

Everything the page shows travels inside it as one JSON document in a
``<script type="application/json">`` block, read with ``JSON.parse``; the page's own script and style
are inlined; figures are files beside it. Nothing is fetched from a network.

Model text is untrusted. The JSON is written with ``<``, ``>``, ``&`` and the two JavaScript line
separators as ``\\uXXXX`` escapes, so no string in it can close the block or open a tag, and the
script builds the page with ``textContent`` only. A Content-Security-Policy admits exactly the page's
own script and style (by hash), images from the site itself, and no connections, so even markup
that got into the document could neither run nor call out.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from collections.abc import Sequence
from importlib import resources

import yaml

from harness.core.stats import DIVERGENCES
from harness.leaderboard.figures import FigureFile, teacher_colours
from harness.leaderboard.merge import CHILD_VALUES, Run, teacher_labels
from harness.results import json_ready

_JSON_ESCAPES = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def script_json(obj) -> str:
    """JSON that is inert inside an HTML ``<script>`` element: no ``</script>``, ``<!--`` or tag can form.

    Plain Python data (the viewer's, built of floats already rounded and None) is dumped as it is;
    anything ``json`` refuses (a nan, a numpy integer) is made strict JSON by ``json_ready`` first, which
    gives the same text for what it would not change (a 250-question, 50-teacher page: 50 s of its
    build went to walking and escaping the data one object and one character at a time)."""
    try:
        text = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError):
        text = json.dumps(json_ready(obj), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.translate(_JSON_ESCAPES)


def _short(x, digits: int = 4):
    """A float rounded to ``digits`` significant digits (the viewer needs no more); None stays None."""
    if x is None:
        return None
    x = float(x)
    return float(f"{x:.{digits}g}") if math.isfinite(x) else None


def viewer_data(run: Run, labels: dict[tuple[str, str], str]) -> dict:
    """Per path of one run: its token texts and, per decision point x teacher, every score and child.

    ``points[position]`` is a list with one item per teacher scored there:
    ``{"t": teacher index, "align": [alignment per algorithm], "adv", "norm" (|g*|), "value" (V),
    "visits", "n_actions", "div": [one per DIVERGENCES], "approx", "children": [[token id, text or
    None, n, w, Q, π, π_T], ...]}``. A child's text is known where the run recorded it or where it is
    the path's own token.
    """
    teachers = sorted({str(t) for t in run.nodes["teacher"]})
    algorithms = list(run.results["config"].get("algorithms") or sorted({str(a) for a in run.nodes["algorithm"]}))
    t_index, a_index = {t: i for i, t in enumerate(teachers)}, {a: i for i, a in enumerate(algorithms)}
    paths = {(p["question_id"], int(p["path_id"])): p for p in run.paths}
    points: dict[tuple, dict] = {}
    n = run.nodes
    for i in range(len(n["teacher"])):
        key = (str(n["question_id"][i]), int(n["path_id"][i]), int(n["position"][i]), str(n["teacher"][i]))
        point = points.get(key)
        if point is None:
            point = points[key] = {
                "t": t_index[key[3]], "align": [None] * len(algorithms), "adv": _short(n["teacher_advantage"][i]),
                "norm": _short(n["ideal_norm"][i]), "value": _short(n["value"][i]) if "value" in n else None,
                "visits": int(n["visits"][i]) if "visits" in n else None, "n_actions": int(n["n_actions"][i]),
                "div": [_short(n[d][i]) for d in DIVERGENCES], "approx": bool(n["approximate"][i]) if "approximate" in n else False,
                "children": [],
            }
        if str(n["algorithm"][i]) in a_index:
            point["align"][a_index[str(n["algorithm"][i])]] = _short(n["alignment"][i])
    c = run.children
    rows = len(c["token"])
    texts = c["text"].tolist() if "text" in c else [None] * rows
    for question, j, k, teacher, token, text, *values in zip(
            *(c[f].tolist() for f in ("question_id", "path_id", "position", "teacher", "token")), texts,
            *(c[f].tolist() if rows else [] for f in CHILD_VALUES), strict=True):
        point = points.get((question, j, k, teacher))
        if point is None:
            continue
        path = paths.get((question, j))
        if text is None and path is not None and k < len(path["tokens"]) and path["tokens"][k] == token:
            text = path["text"][k]
        n, w, q, pi, pi_teacher = values
        point["children"].append([token, text, n, w, _short(q), _short(pi), _short(pi_teacher)])
    per_path: dict[tuple[str, int], dict[str, list]] = {}
    for (q, j, k, _t), point in sorted(points.items()):
        point["children"].sort(key=lambda ch: -(ch[5] or 0))  # most likely under the student first
        per_path.setdefault((q, j), {}).setdefault(str(k), []).append(point)
    out_paths = [
        {"question": q, "path": j, "correct": bool(p["correct"]), "tokens": [int(t) for t in p["tokens"]],
         "text": [str(t) for t in p["text"]], "points": per_path.get((q, j), {})}
        for (q, j), p in sorted(paths.items())
    ]
    return {
        "run": run.id, "task": run.results["task"], "student": run.results["student"],
        "teachers": [labels.get((run.id, t), t) for t in teachers], "algorithms": algorithms,
        "divergences": list(DIVERGENCES), "paths": out_paths,
    }


def fit_viewer(viewers: list[dict], budget_bytes: int) -> list[dict]:
    """Keep as many paths as fit in ``budget_bytes`` of page data, spread over runs and questions.

    Paths are taken round-robin: every question's first path in every run, then every second path,
    and so on, so a long-trace run shows each question before it shows a second path of any. Each
    run records how many of its paths were ``omitted``.
    """
    order = sorted(
        ((rank, i, j) for i, v in enumerate(viewers)
         for j, rank in enumerate(_rank_within_question(v["paths"]))),
    )
    keep, used = set(), 0
    for _rank, i, j in order:
        size = len(script_json(viewers[i]["paths"][j]))
        if used + size > budget_bytes:
            continue  # a smaller path may still fit
        keep.add((i, j))
        used += size
    return [
        {**v, "paths": [p for j, p in enumerate(v["paths"]) if (i, j) in keep],
         "omitted": sum((i, j) not in keep for j in range(len(v["paths"])))}
        for i, v in enumerate(viewers)
    ]


def _rank_within_question(paths: list[dict]) -> list[int]:
    seen: dict[str, int] = {}
    ranks = []
    for p in paths:
        ranks.append(seen.get(p["question"], 0))
        seen[p["question"]] = ranks[-1] + 1
    return ranks


def _asset(name: str) -> str:
    return resources.files("harness.leaderboard").joinpath("assets", name).read_text(encoding="utf-8")


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode() + "'"


VIEWER_BUDGET_MB = 25.0  # page data for the per-token viewer; long-trace runs keep a spread of paths


def render(board: dict, runs: Sequence[Run], figures: Sequence[FigureFile], viewer_mb: float = VIEWER_BUDGET_MB,
           validations: Sequence[dict] = ()) -> str:
    """The whole ``index.html``; the viewer's paths are cut to ``viewer_mb`` megabytes of data.

    ``validations`` (``write_validation_figures``) add the "Does alignment predict training?" panel.
    """
    import jinja2

    labels = teacher_labels(runs)
    data = {
        "board": board,
        "colours": teacher_colours({e["label"] for e in board["entries"]}),
        "viewer": fit_viewer([viewer_data(run, labels) for run in runs], int(viewer_mb * 1e6)),
        "divergences": list(DIVERGENCES),
    }
    script, style = _asset("app.js"), _asset("style.css")
    if "</" in script or "</" in style:
        raise ValueError("an inlined asset may not contain '</' (it would end its element)")
    csp = "; ".join([
        "default-src 'none'",
        f"script-src {_csp_hash(script)}",
        f"style-src {_csp_hash(style)}",
        "img-src 'self' file: data:",  # figures beside the page; file: for a page opened from disk
        "base-uri 'none'",
        "form-action 'none'",
    ])
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("harness.leaderboard", "assets"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    return env.get_template("index.html.j2").render(
        board=board,
        groups=board["groups"],
        runs=board["runs"],
        figures=figures,
        configs={r["id"]: yaml.safe_dump(r["config"], sort_keys=False) for r in board["runs"]},
        data_json=script_json(data),
        script=script,
        style=style,
        csp=csp,
        validations=validations,
    )
