"""The leaderboard without a browser: merging, the JSON, figures, the page's files, the evaluate
metric and the model-index export, on a synthetic run (SPEC §5, §6)."""

import base64
import hashlib
import html as html_lib
import json
import os
import math
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from harness.config import ConfigError, RunConfig
from harness.core.stats import NODE_COLUMNS, aggregate
from harness.leaderboard import build, main_leaderboard, main_model_card
from harness.leaderboard.figures import depth_window
from harness.leaderboard.merge import SCHEMA_VERSION, load_runs, merge, run_ids
from harness.leaderboard.modelcard import model_index
from harness.leaderboard.site import fit_viewer, script_json, viewer_data
from harness.results import json_ready
from harness.pipeline import run, windows


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lb") / "synth"
    run(RunConfig(), out)
    return out


@pytest.fixture(scope="module")
def site(run_dir, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("site")
    return out, build([run_dir], out)


def _results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def _copy(run_dir: Path, dest: Path, **results_changes) -> Path:
    shutil.copytree(run_dir, dest, ignore=shutil.ignore_patterns("shards"))
    if results_changes:
        results = _results(dest) | results_changes
        (dest / "results.json").write_text(json.dumps(results))
    return dest


def _reseed(run: Path) -> None:
    results = _results(run)
    results["config"]["seed"] += 1
    (run / "results.json").write_text(json.dumps(results))


def _same(a, b) -> bool:
    """Equality that treats nan and None (JSON null) as the same missing number."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    missing = lambda x: x is None or (isinstance(x, float) and math.isnan(x))  # noqa: E731
    if missing(a) or missing(b):
        return missing(a) and missing(b)
    return a == b


# ------------------------------------------------------------------------------------------ merge


def test_entries_carry_each_results_row_and_its_cost(run_dir, site):
    _, board = site
    results = _results(run_dir)
    assert board["schema_version"] == SCHEMA_VERSION
    assert len(board["entries"]) == len(results["teachers"]) == 2 * 6
    by_key = {(e["teacher"], e["algorithm"]): e for e in board["entries"]}
    for row in results["teachers"]:
        entry = by_key[(row["teacher"], row["algorithm"])]
        for field in ("alignment", "weighted_alignment", "incorrect_minus_correct", "teacher_advantage",
                      "divergence_correlations", "n_decision_points"):
            assert _same(entry[field], row[field]), field
        # one run: the merged ranking is the run's own
        assert entry["rank"] == row["rank"]
        assert sorted(entry["tied_with"]) == sorted(f"{t}@{entry['run']}" for t in row["tied_with"])
        assert entry["rollouts"] == results["counts"]["rollouts"]
        assert entry["tokens_generated"] == results["counts"]["tokens_generated"]


def test_provenance_of_every_run_is_kept(run_dir, site):
    _, board = site
    results = _results(run_dir)
    (prov,) = board["runs"]
    for key in ("schema_version", "task", "student", "config", "config_hash", "versions", "counts", "created_at",
                "models", "teacher_info"):
        assert prov[key] == results[key], key
    assert board["generator"]["odiag"] == results["versions"]["odiag"]
    assert board["groups"] == [{
        "id": "synthetic--synthetic", "task": "synthetic", "student": "synthetic", "runs": [prov["id"]],
        "algorithms": sorted(results["config"]["algorithms"]), "headline_algorithm": "gkd",
        "teachers": ["synthetic-helpful", "synthetic-misleading"],
    }]


def test_runs_of_one_task_and_student_are_ranked_together(run_dir, tmp_path):
    """Two runs with the same numbers (the second made to read as drawn from another seed: a copy of one run is
    refused, it would count each teacher twice): equal ranks, each tied with its twin; names disambiguated."""
    a, b = _copy(run_dir, tmp_path / "a" / "synth"), _copy(run_dir, tmp_path / "b" / "synth")
    _reseed(b)
    board = merge(load_runs([a, b]))
    assert [r["id"] for r in board["runs"]] == ["synth", "synth-2"]
    assert len(board["groups"]) == 1 and len(board["entries"]) == 24
    for e in board["entries"]:
        twin = f"{e['teacher']}/{e['algorithm']}@{'synth-2' if e['run'] == 'synth' else 'synth'}"
        assert twin in e["tied_with"]
        assert e["label"] == f"{e['teacher']} @ {e['run']}"
    gkd = {e["key"]: e["rank"] for e in board["entries"] if e["algorithm"] == "gkd"}
    assert gkd == {"synthetic-helpful/gkd@synth": 1, "synthetic-helpful/gkd@synth-2": 1,
                   "synthetic-misleading/gkd@synth": 3, "synthetic-misleading/gkd@synth-2": 3}


def test_no_two_teachers_of_a_group_share_a_label():
    """A teacher whose own name reads as another's label (``t @ r`` beside teacher ``t`` repeated in run ``r``)
    gets its run too; the figures and colours, keyed by label, would otherwise show one teacher's numbers
    under the other's name. Where nothing collides, labels are the names (and ``t @ run`` for a repeated t)."""
    from types import SimpleNamespace

    from harness.leaderboard.merge import teacher_labels

    def fake(run_id, *teachers, group=("task", "student")):
        return SimpleNamespace(id=run_id, group=group, results={"teachers": [
            {"teacher": t, "algorithm": a} for t in teachers for a in ("gkd", "forward_kl")]})

    runs = [fake("lab", "t", "t @ s1", "t @ s1 @ lab"), fake("s1", "t"), fake("other", "t @ s1", group=("task", "x"))]
    labels = teacher_labels(runs)
    assert labels == {("lab", "t"): "t @ lab", ("s1", "t"): "t @ s1", ("lab", "t @ s1"): "t @ s1 @ lab (2)",
                      ("lab", "t @ s1 @ lab"): "t @ s1 @ lab", ("other", "t @ s1"): "t @ s1"}
    assert teacher_labels([fake("a", "t", "u"), fake("b", "u")]) == {
        ("a", "t"): "t", ("a", "u"): "u @ a", ("b", "u"): "u @ b"}


def test_students_are_separate_groups(run_dir, tmp_path):
    other = _copy(run_dir, tmp_path / "other", student="tiny-student")
    board = merge(load_runs([run_dir, other]))
    assert [(g["task"], g["student"]) for g in board["groups"]] == [("synthetic", "synthetic"), ("synthetic", "tiny-student")]
    # a teacher that appears once per group keeps its plain name
    assert {e["label"] for e in board["entries"]} == {"synthetic-helpful", "synthetic-misleading"}


def test_students_whose_names_read_alike_as_file_names_keep_their_own_figures(run_dir, tmp_path):
    """Students m/s and m_s made one group id, so one's figures were written over the other's and the page
    showed them under both."""
    board = merge(load_runs([_copy(run_dir, tmp_path / "x", student="/w/m/s"), _copy(run_dir, tmp_path / "y", student="/w/m_s")]))
    assert [g["id"] for g in board["groups"]] == ["synthetic--_w_m_s", "synthetic--_w_m_s-2"]


def test_runs_naming_two_teacher_files_alike_are_not_ranked_as_one_teacher(tmp_path):
    """Two runs of one group, each with its own file named extra.yaml: one name, two teachers. Ranked together they read
    as one teacher sampled twice; refused, naming both identities (the same file in both runs ranks together)."""
    files = []
    for sub, model in (("a", "helpful"), ("b", "misleading")):
        (tmp_path / sub).mkdir()
        files.append(tmp_path / sub / "extra.yaml")
        files[-1].write_text(f"description: a copy\nmodel: {model}\n")
    runs = [tmp_path / "one", tmp_path / "two", tmp_path / "three"]
    for out, file, seed in zip(runs, (files[0], files[1], files[0]), (0, 1, 2)):
        run(RunConfig(limit=2, seed=seed, teachers=(str(file),)), out)
    identities = [_results(out)["teacher_info"]["extra"]["identity"] for out in runs[:2]]
    with pytest.raises(ConfigError, match=rf"runs {runs[0]} and {runs[1]} .* name two different teachers 'extra' "
                                          rf"\(identities {identities[0]} and {identities[1]}"):
        load_runs(runs[:2])
    assert len(merge(load_runs([runs[0], runs[2]]))["entries"]) == 2 * len(RunConfig().algorithms)


def test_runs_drawn_from_two_files_of_one_student_path_are_not_ranked_together(tmp_path):
    """The student's folder changed between two runs (retrained in place): one path, two models; refused by their
    fingerprints, as every other command refuses a run whose model files changed."""
    from safetensors.numpy import load_file, save_file

    from harness.toy import TOY_DIR

    student = tmp_path / "student"
    shutil.copytree(TOY_DIR / "student", student)
    config = dict(task="odiag_toy", backend="hf", student=str(student), teachers=("toy-teacher",), limit=1, budget=100)
    run(RunConfig(**config), tmp_path / "before")
    weights = load_file(student / "model.safetensors")
    name = next(k for k, v in weights.items() if v.dtype.kind == "f")
    save_file({**weights, name: weights[name] * 1.01}, student / "model.safetensors", metadata={"format": "pt"})
    run(RunConfig(**config, seed=1), tmp_path / "after")
    prints = [_results(tmp_path / out)["models"][str(student)] for out in ("before", "after")]
    assert prints[0] != prints[1]
    with pytest.raises(ConfigError, match=rf"were drawn from different files of the student \(fingerprints {prints[0]} and {prints[1]}\)"):
        load_runs([tmp_path / "before", tmp_path / "after"])


def test_run_ids_are_short_and_unique():
    assert run_ids(["runs/demo", "x/demo", "y/demo/", "a b"]) == ["demo", "demo-2", "demo-3", "a_b"]
    assert run_ids(["runs/é中文🎓", "x/ü"]) == ["é中文_", "ü"]  # letters of any script kept (they were "_" and "_-2")
    assert run_ids(["e\u0301te\u0301"]) == ["\u00e9t\u00e9"]  # an accent typed apart from its letter is one letter


def test_refuses_what_is_not_a_finished_run(tmp_path, run_dir):
    with pytest.raises(ConfigError, match="no config.json"):
        load_runs([tmp_path])
    bad = _copy(run_dir, tmp_path / "old", schema_version="odiag.results/0")
    with pytest.raises(ConfigError, match="schema_version"):
        load_runs([bad])
    (_copy(run_dir, tmp_path / "partial") / "children.parquet").unlink()
    with pytest.raises(ConfigError, match="children.parquet"):
        load_runs([tmp_path / "partial"])
    with pytest.raises(ConfigError):
        load_runs([])


# ------------------------------------------------------------------------------------------ site


def _data(html: str) -> dict:
    block = re.search(r'<script type="application/json" id="odiag-data">(.*?)</script>', html, re.S)
    return json.loads(block.group(1))


def test_site_files(site):
    out, board = site
    assert json.loads((out / "leaderboard.json").read_text()) == board
    stems = {p.stem for p in (out / "figures").iterdir()}
    assert stems == {"synthetic--ranking"} | {f"synthetic--synthetic--{k}" for k in
                                              ("correct-vs-incorrect", "depth", "n-actions", "divergence")}
    for stem in stems:
        assert (out / "figures" / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        root = ET.parse(out / "figures" / f"{stem}.svg").getroot()
        assert root.tag.endswith("svg")
    html = (out / "index.html").read_text()
    for stem in stems:
        assert f'src="figures/{stem}.svg"' in html


def test_page_is_self_contained_and_its_data_is_the_board(site):
    out, board = site
    html = (out / "index.html").read_text()
    data = _data(html)
    assert data["board"] == board
    assert not re.search(r'(src|href)="(https?:)?//', html), "the page must not load anything from a network"
    scripts = re.findall(r"<script>(.*?)</script>", html, re.S)
    assert len(scripts) == 1
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in scripts[0], sink
    csp = html_lib.unescape(re.search(r'http-equiv="Content-Security-Policy" content="([^"]*)"', html).group(1))
    digest = base64.b64encode(hashlib.sha256(scripts[0].encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in csp and "default-src 'none'" in csp and "connect-src" not in csp


def test_script_json_cannot_end_its_element():
    evil = {"t": ["</script><script>alert(1)</script>", "<!--", "<img src=x onerror=alert(1)>", "a&b", "\u2028\u2029"],
            "x": float("nan")}
    text = script_json(evil)
    assert not re.search(r"[<>&\u2028\u2029]", text)
    assert json.loads(text) == {"t": evil["t"], "x": None}


def test_script_json_dumps_plain_data_as_the_strict_json_of_it(run_dir):
    """Plain data skips the walk that makes JSON strict, and anything that walk would change (nan, numpy
    numbers) still goes through it: the text is the same either way, for the board and the viewer."""
    runs = load_runs([run_dir])
    strict = lambda obj: json.dumps(json_ready(obj), ensure_ascii=False, allow_nan=False, separators=(",", ":"))  # noqa: E731
    for obj in (merge(runs), viewer_data(runs[0], {}), {"n": np.int64(3), "f": np.float64(0.1), "b": np.bool_(True),
                                                         "x": [float("inf"), (1, "<&>")]}):
        assert json.loads(script_json(obj)) == json.loads(strict(obj))
        assert script_json(obj) == strict(obj).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def test_viewer_data_matches_the_node_tables(run_dir):
    (r,) = load_runs([run_dir])
    labels = {(r.id, t): t for t in ("synthetic-helpful", "synthetic-misleading")}
    v = viewer_data(r, labels)
    nodes = pq.read_table(run_dir / "nodes.parquet").to_pylist()
    children = pq.read_table(run_dir / "children.parquet").to_pylist()
    paths = pq.read_table(run_dir / "paths.parquet").to_pylist()
    assert [(p["question"], p["path"]) for p in v["paths"]] == sorted((p["question_id"], p["path_id"]) for p in paths)
    assert sum(len(pts) for p in v["paths"] for pts in p["points"].values()) == len(nodes) // len(v["algorithms"])
    assert sum(len(pt["children"]) for p in v["paths"] for pts in p["points"].values() for pt in pts) == len(children)
    row = next(n for n in nodes if n["algorithm"] == "gkd" and np.isfinite(n["alignment"]))
    path = next(p for p in v["paths"] if (p["question"], p["path"]) == (row["question_id"], row["path_id"]))
    point = next(pt for pt in path["points"][str(row["position"])] if v["teachers"][pt["t"]] == row["teacher"])
    assert point["align"][v["algorithms"].index("gkd")] == pytest.approx(row["alignment"], rel=1e-3)
    assert point["n_actions"] == len(point["children"]) == row["n_actions"]
    on_path = [c for c in point["children"] if c[0] == path["tokens"][row["position"]]]
    assert all(c[1] == path["text"][row["position"]] for c in on_path)


def test_depth_windows_match_the_pipeline():
    width = 50
    expected = np.concatenate([np.full(hi - lo, j) for j, (lo, hi) in enumerate(windows(2000, width))])
    assert np.array_equal(depth_window(np.arange(2000), np.full(2000, width)), expected)


def test_a_figure_that_fails_mid_write_leaves_nothing(tmp_path, monkeypatch):
    """A build stopped inside savefig (a full disk, a kill) leaves no half-written figure for a page to link."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from harness.leaderboard import figures

    fig = plt.figure()

    def half_then_fail(self, fname, **kwargs):
        (open(fname, "wb") if isinstance(fname, (str, Path)) else fname).write(b"<svg half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(type(fig), "savefig", half_then_fail)
    with pytest.raises(Exception, match="No space left"):
        figures._save(fig, tmp_path, "ranking")
    assert list(tmp_path.iterdir()) == []
    plt.close(fig)


def test_a_build_refused_a_write_leaves_the_previous_page_whole(run_dir, tmp_path, monkeypatch):
    """A full disk while the new page is written leaves the previous page, its JSON and its figures as they
    were (everything is written before anything is replaced), and nothing of the failed build behind."""
    from harness import rundir

    other = tmp_path / "other"
    run(RunConfig(seed=1, limit=2), other)
    out = tmp_path / "site"
    build([run_dir], out)

    def files():
        return {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    before, real = files(), rundir.tempfile.mkstemp
    for last in ("leaderboard.json", "index.html"):

        def full(*args, prefix="", last=last, **kwargs):
            if prefix.startswith(f".{last}."):
                raise OSError(28, "No space left on device")
            return real(*args, prefix=prefix, **kwargs)

        monkeypatch.setattr(rundir.tempfile, "mkstemp", full)
        with pytest.raises(rundir.RunDirError, match="No space left"):
            build([other], out)
        assert files() == before, last
    monkeypatch.setattr(rundir.tempfile, "mkstemp", real)
    build([other], out)  # the same command, once there is room, replaces the page whole
    assert json.loads((out / "leaderboard.json").read_text())["runs"] != json.loads(before[Path("leaderboard.json")])["runs"]
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def test_figures_are_reproducible(run_dir, site, tmp_path):
    """Pinned: regenerating from the same runs gives byte-identical SVGs (the committed page diffs cleanly)."""
    out, _ = site
    build([run_dir], tmp_path)
    for svg in (out / "figures").glob("*.svg"):
        assert (tmp_path / "figures" / svg.name).read_bytes() == svg.read_bytes(), svg.name


def test_main_leaderboard_reports_the_page(run_dir, tmp_path, capsys):
    assert main_leaderboard([str(run_dir)], str(tmp_path / "out")) == 0
    out = capsys.readouterr().out
    assert f"page: {tmp_path / 'out' / 'index.html'}" in out
    assert out.startswith("1 run, ") and " entries (" in out, out  # words agree with their counts


def test_plural_agrees_with_the_count():
    from harness.wording import plural

    assert [f"{n} {plural(n, 'question')}" for n in (0, 1, 2)] == ["0 questions", "1 question", "2 questions"]
    assert plural(1, "entry", "entries") == "entry" and plural(3, "entry", "entries") == "entries"


# ------------------------------------------------------------------------------------------ Hugging Face


def test_a_model_card_of_a_run_without_numbers_is_refused_with_the_runs_reason(tmp_path):
    """A model-index with no metric publishes nothing: said as such, as odiag validate says it."""
    out = tmp_path / "run"
    run(RunConfig(limit=1, n_min=100000, algorithms=("gkd",)), out)
    with pytest.raises(ConfigError, match=r"nothing to publish, the run has no decision point: 1 question, .*n_min=100000"):
        main_model_card(str(out))


def test_a_model_card_refuses_a_run_the_leaderboard_refuses(run_dir, tmp_path):
    """A card reads a finished run as the leaderboard does: a missing table, or results.json of another run beside
    these tables, is refused, not published."""
    missing = _copy(run_dir, tmp_path / "missing")
    (missing / "nodes.parquet").unlink()
    with pytest.raises(ConfigError, match="missing nodes.parquet"):
        main_model_card(str(missing))
    other = tmp_path / "other"
    run(RunConfig(limit=2, seed=3), other)
    mixed = _copy(run_dir, tmp_path / "mixed")
    shutil.copyfile(other / "results.json", mixed / "results.json")
    with pytest.raises(ConfigError, match="not the table results.json was written with"):
        main_model_card(str(mixed))


def test_a_results_json_whose_rows_are_not_its_node_records_is_refused(run_dir, tmp_path):
    """The leaderboard and a model card aggregate each run's headline numbers again from nodes.parquet: a
    results.json whose numbers were edited by hand (the tables' hashes unchanged) was published as it read; the
    fix it names writes the true rows again. Fields odiag's statistics added later (a pooled test) are not
    compared: a run written before them is still published."""
    results = _results(run_dir)
    cases = {  # what is edited: the refusal's words
        "mean": (lambda rows: rows[1]["alignment"].update(mean=rows[1]["alignment"]["mean"] + 0.05),
                 "alignment: mean is "),
        "advantage": (lambda rows: rows[0]["teacher_advantage"].update(mean=None), "teacher_advantage: mean is None there"),
        "points": (lambda rows: rows[0].update(n_decision_points=5), "n_decision_points is 5 there"),
        "gone": (lambda rows: rows.pop(2), "no row for "),
    }
    for name, (edit, said) in cases.items():
        rows = json.loads(json.dumps(results["teachers"]))
        edit(rows)
        edited = _copy(run_dir, tmp_path / name, teachers=rows)
        with pytest.raises(ConfigError, match=re.escape(said)) as err:
            build([edited], tmp_path / f"site-{name}")
        assert str(err.value).startswith(f"{edited / 'results.json'}: ") and not (tmp_path / f"site-{name}").exists()
        with pytest.raises(ConfigError, match=re.escape(said)):
            main_model_card(str(edited))
    assert "remove it and run odiag run --config " in str(err.value)
    build([_copy(run_dir, tmp_path / "as-written")], tmp_path / "site")  # rows as the run wrote them: taken
    older = json.loads(json.dumps(results["teachers"]))
    for row in older:
        row["incorrect_minus_correct"].pop("pooled", None)
    build([_copy(run_dir, tmp_path / "older", teachers=older)], tmp_path / "site-older")


def test_model_index_round_trips_through_huggingface_hub(run_dir, capsys):
    results = _results(run_dir)
    assert main_model_card(str(run_dir)) == 0
    meta = yaml.safe_load(capsys.readouterr().out)
    assert meta["model-index"] == model_index(results)
    (entry,) = meta["model-index"]
    listed = entry["results"][0]["metrics"]
    gkd = sorted((r for r in results["teachers"] if r["algorithm"] == "gkd"), key=lambda r: r["rank"])
    assert [m["config"] for m in listed if m["type"] == "odiag_alignment"][: len(gkd)] == [
        f"{r['teacher']}/gkd" for r in gkd]  # the headline algorithm first, by rank
    metrics = {(m["type"], m["config"]): m for m in listed}
    for row in results["teachers"]:
        m = metrics[("odiag_alignment", f"{row['teacher']}/{row['algorithm']}")]
        assert m["value"] == round(row["alignment"]["mean"], 4)
        assert m["args"]["ci95"] == [round(x, 4) for x in row["alignment"]["ci95"]] and m["args"]["config_hash"] == results["config_hash"]
        imc, card = row["incorrect_minus_correct"], metrics[("odiag_incorrect_minus_correct", f"{row['teacher']}/{row['algorithm']}")]
        assert m["args"]["rank"] == row["rank"] and "rank" not in card["args"]  # the rank is by alignment
        assert m["args"]["tied_with"] == row["tied_with"] and "tied_with" not in card["args"]  # ties as SPEC §5 marks them
        if imc.get("p_paired") is not None:  # 3 significant digits: a small p keeps its size
            assert card["args"]["p_paired"] == pytest.approx(imc["p_paired"], rel=5e-3) and len(repr(card["args"]["p_paired"])) <= 9
    repocard_data = pytest.importorskip("huggingface_hub.repocard_data")
    name, evals = repocard_data.model_index_to_eval_results(meta["model-index"])
    assert name == "synthetic" and len(evals) == 4 * len(results["teachers"])
    assert {e.dataset_type for e in evals} == {"synthetic"}


def test_evaluate_metric_gives_the_results_rows(run_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    evaluate = pytest.importorskip("evaluate")
    from harness.metrics import ODIAG_ALIGNMENT

    metric = evaluate.load(ODIAG_ALIGNMENT, cache_dir=str(tmp_path / "cache"))
    columns = pq.read_table(run_dir / "nodes.parquet").to_pydict()
    out = metric.compute(**{k: columns[k] for k in NODE_COLUMNS}, seed=0)
    expected = aggregate({k: np.asarray(columns[k]) for k in NODE_COLUMNS}, seed=0)
    assert _same(out["teachers"], expected)
    results = _results(run_dir)
    assert out["alignment"] == {f"{r['teacher']}/{r['algorithm']}": r["alignment"]["mean"] for r in results["teachers"]}


def test_evaluate_metric_refuses_what_it_would_misread(tmp_path, monkeypatch):
    """A null path_correct once counted as an incorrect path, a misspelt option was ignored, a missing
    column failed inside ``evaluate`` with "NoneType has no len()"; each is now refused by name."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    evaluate = pytest.importorskip("evaluate")
    from harness.metrics import ODIAG_ALIGNMENT

    metric = evaluate.load(ODIAG_ALIGNMENT, cache_dir=str(tmp_path / "cache"))
    base = dict(question_id=["q0", "q0"], path_id=[0, 1], path_correct=[True, False], position=[0, 0],
                teacher=["t", "t"], algorithm=["gkd", "gkd"], alignment=[0.5, 0.9], ideal_norm=[1.0, 1.0],
                teacher_advantage=[0.1, 0.2], n_actions=[2, 3], kl=[0.1, 0.2], reverse_kl=[0.1, 0.2],
                js=[0.0, 0.1], tv=[0.1, 0.2], prob_cosine=[0.9, 0.8])
    assert metric.compute(**base)["alignment"] == {"t/gkd": pytest.approx(0.7)}
    for bad, message in ((dict(path_correct=[None, False]), "'path_correct' holds a null at row 0"),
                         (dict(n_bootstrap=100), r"unknown arguments \['n_bootstrap'\]"),
                         (dict(kl=None), r"missing input columns \['kl'\]"),
                         (dict(alignment=[5.0, 0.1]), "outside \\[-1, 1\\]"),
                         (dict(seed=1.5), "seed must be a whole number")):
        with pytest.raises(ValueError, match=message):
            metric.compute(**{**base, **bad})
    metric.add_batch(**base)  # evaluate's streaming use: the columns come from add_batch
    assert metric.compute(seed=0)["alignment"] == {"t/gkd": pytest.approx(0.7)}
    metric.add_batch(**{**base, "path_correct": [None, False]})
    with pytest.raises(ValueError, match="'path_correct' holds a null at row 0"):
        metric.compute(seed=0)


def test_viewer_keeps_a_spread_of_paths_within_its_budget(run_dir):
    """Round-robin over questions: a budget for about one path per question keeps one of each."""
    (r,) = load_runs([run_dir])
    v = viewer_data(r, {})
    first = [p for p in v["paths"] if p["path"] == min(q["path"] for q in v["paths"] if q["question"] == p["question"])]
    budget = sum(len(script_json(p)) for p in first)
    (fitted,) = fit_viewer([v], budget)
    assert [(p["question"], p["path"]) for p in fitted["paths"]] == [(p["question"], p["path"]) for p in first]
    assert fitted["omitted"] == len(v["paths"]) - len(first)
    assert fit_viewer([v], 10**9)[0]["omitted"] == 0


def test_divergence_labels_name_the_directions_the_core_computes():
    """The figures' and the page's KL labels must match harness.core.divergences (forward is KL(π_T‖π))."""
    from harness.core.divergences import DIVERGENCES as FUNCTIONS
    from harness.leaderboard.figures import DIVERGENCE_NAMES

    app = (Path(__file__).parents[1] / "harness" / "leaderboard" / "assets" / "app.js").read_text()
    for name in ("kl", "reverse_kl"):
        formula = FUNCTIONS[name].__doc__.split("=")[0].replace(" ", "")
        assert DIVERGENCE_NAMES[name].startswith(formula)
        assert re.search(rf'\b{name}: "{re.escape(formula)}"', app)


def test_a_build_stopped_while_drawing_leaves_the_previous_page_whole(run_dir, tmp_path, monkeypatch):
    """Figures are drawn into a staging folder: a build that fails (or is stopped) before the page is
    written leaves the previous page, its data and every figure it links as they were, and no staging."""
    from harness.leaderboard import figures

    out = tmp_path / "site"
    build([run_dir], out)
    (out / "figures" / "notes.txt").write_text("kept")  # a file odiag did not draw moves along with the figures
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    drawn = []

    def draw_then_stop(fig, where, stem):
        if drawn:
            raise KeyboardInterrupt
        drawn.append(stem)
        real_save(fig, where, stem)

    real_save = figures._save
    monkeypatch.setattr(figures, "_save", draw_then_stop)
    with pytest.raises(KeyboardInterrupt):
        build([run_dir], out)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in out.iterdir()) == ["figures", "index.html", "leaderboard.json"]
    monkeypatch.setattr(figures, "_save", real_save)
    build([run_dir], out)
    assert (out / "figures" / "notes.txt").read_text() == "kept" and (out / "index.html").stat().st_mode & 0o777 == 0o644
    assert {p.name for p in out.iterdir()} == {"figures", "index.html", "leaderboard.json"}


def test_a_build_stopped_between_its_renames_of_the_figures_keeps_a_file_odiag_did_not_draw(run_dir, tmp_path, monkeypatch):
    """The swap moves a file odiag did not draw into the staged figures, then renames twice. Stopped between the
    renames (Ctrl-C), it puts the previous figures and the file back; killed there (no clean-up ran), the next
    build does, instead of removing the staged folder with the file in it (it was lost)."""
    from pathlib import Path

    out = tmp_path / "site"
    build([run_dir], out)
    (out / "figures" / "notes.txt").write_text("kept")
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    real_rename = Path.rename

    def stop_at_the_second(self, target):
        if self.name.startswith(".figures.") and self.name.endswith(".tmp") and Path(target).name == "figures":
            raise KeyboardInterrupt
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", stop_at_the_second)
    with pytest.raises(KeyboardInterrupt):
        build([run_dir], out)
    monkeypatch.undo()
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    # as a kill -9 there leaves it: no figures/, the old ones and the staged ones (with the file) beside the page
    (out / "figures").rename(out / ".figures.old.4242")
    staged = out / ".figures.x1y2.tmp"
    staged.mkdir()
    (out / ".figures.old.4242" / "notes.txt").rename(staged / "notes.txt")
    build([run_dir], out)
    assert (out / "figures" / "notes.txt").read_text() == "kept"
    assert {p.name for p in out.iterdir()} == {"figures", "index.html", "leaderboard.json"}

def test_a_ctrl_c_while_a_build_moves_its_site_into_place_waits_for_the_whole_site(run_dir, tmp_path, monkeypatch):
    """The figures, the data and the page are three renames: a Ctrl-C between them left the new figures beside
    the old table. It now waits for the last rename: the site is the new one whole, and the build still stops."""
    import signal

    import harness.leaderboard as leaderboard

    out = tmp_path / "site"
    build([run_dir], out)
    other = _copy(run_dir, tmp_path / "other" / "synth")
    _reseed(other)
    real_swap = leaderboard._swap_figures

    def swap_then_ctrl_c(staging, figures):
        real_swap(staging, figures)
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(leaderboard, "_swap_figures", swap_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        build([run_dir, other], out)
    monkeypatch.undo()
    assert len(json.loads((out / "leaderboard.json").read_text())["runs"]) == 2
    page = (out / "index.html").read_text()
    assert json.dumps(json.loads((out / "leaderboard.json").read_text())["runs"][1]["id"]) in page
    assert {p.name for p in out.iterdir()} == {"figures", "index.html", "leaderboard.json"}
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler it had, back


def test_binned_figures_take_their_ci_over_questions_not_paths():
    """SPEC §5: the paths of one question are not independent. Two questions, each with three paths that
    agree: the CI is a t interval over the two question means (paths averaged first, then questions)."""
    from scipy import stats as st

    from harness.leaderboard.figures import _by_bin

    alignment = np.array([0.9, 0.8, 1.0, 1.0, -0.5, -0.4, -0.6, -0.5])  # paths 0-2 of q1 (path 2 twice), q2
    question = np.array(["r\x00q1"] * 4 + ["r\x00q2"] * 4)
    path = np.array(["r\x00q1\x000", "r\x00q1\x001", "r\x00q1\x002", "r\x00q1\x002",
                     "r\x00q2\x000", "r\x00q2\x001", "r\x00q2\x002", "r\x00q2\x002"])
    nodes = {"alignment": alignment, "question_key": question, "path_key": path}
    ((mean, lo, hi, count),) = _by_bin(nodes, np.ones(8, bool), np.zeros(8, int), [0])
    means = np.array([np.mean([0.9, 0.8, 1.0]), np.mean([-0.5, -0.4, -0.55])])
    half = st.t.ppf(0.975, 1) * means.std(ddof=1) / np.sqrt(2)
    assert count == 8 and mean == pytest.approx(means.mean())
    assert (lo, hi) == pytest.approx(tuple(np.clip([means.mean() - half, means.mean() + half], -1, 1)))
    # near +1 the t interval reaches past 1: cut to the range, as in results.json (three questions here)
    nodes = {"alignment": np.array([1.0, 1.0, 0.9, 0.9, 0.5, 0.5]), "question_key": np.repeat(["a", "b", "c"], 2),
             "path_key": np.array(["a0", "a1", "b0", "b1", "c0", "c1"])}
    ((mean, lo, hi, _),) = _by_bin(nodes, np.ones(6, bool), np.zeros(6, int), [0])
    assert mean == pytest.approx(0.8) and hi == 1.0 and 0 < 0.8 - lo < 1


def test_a_model_card_names_a_local_student_by_its_folder_not_its_path(run_dir, capsys, tmp_path, monkeypatch):
    """A student loaded from /home/me/ckpts/run-3 once published that path as the model's name."""
    from harness.leaderboard.modelcard import card_name

    results = _results(run_dir)
    assert card_name("/home/me/ckpts/run-3/") == "run-3" and card_name("./ckpt") == "ckpt"
    assert card_name("harness/toy_models/student") == "student" and card_name("Qwen/Qwen3-0.6B") == "Qwen/Qwen3-0.6B"
    assert card_name(str(run_dir.parent)) == run_dir.parent.name
    (tmp_path / "ckpts" / "run-3").mkdir(parents=True)  # a local folder named as a hub id would be
    monkeypatch.chdir(tmp_path)
    assert card_name("ckpts/run-3") == "run-3" and card_name("ckpts/elsewhere") == "ckpts/elsewhere"
    assert card_name(".") == tmp_path.name
    assert model_index({**results, "student": "/home/me/ckpts/run-3"})[0]["name"] == "run-3"
    assert main_model_card(str(run_dir), model_name="my-org/my-student") == 0
    assert yaml.safe_load(capsys.readouterr().out)["model-index"][0]["name"] == "my-org/my-student"
    with pytest.raises(ConfigError, match="--model-name: empty"):
        main_model_card(str(run_dir), model_name=" ")


def test_a_model_card_value_that_rounds_to_zero_reads_zero():
    """A mean of -0.00001 was published as `value: -0.0`."""
    from harness.leaderboard.modelcard import _round

    assert str(_round(-0.00001)) == "0.0" and _round(-0.12345) == -0.1235 and _round(None) is None


def test_error_bars_of_a_mean_rounded_past_minus_one_are_zero_not_negative():
    """Every node of a bin at alignment −1 − 2⁻⁵² (a cosine in floating point): its interval cut to [−1, 1] lies
    above the mean, and matplotlib refuses a negative bar (the demo's page build stopped on it)."""
    from harness.leaderboard.figures import _err

    edge = -1 - 2.0**-52
    err = _err([edge, 0.2, np.nan], [-1.0, 0.1, np.nan], [-1.0, 0.4, np.nan])
    assert (err >= 0).all() and err[0, 0] == 0.0
    assert np.allclose(err, [[0.0, 0.1, 0.0], [0.0, 0.2, 0.0]], rtol=0, atol=1e-15)


def test_the_page_shows_a_heavy_svg_figure_as_its_png(site, run_dir, tmp_path, monkeypatch):
    """SVGs of many teachers and merged runs reach 10 MB each (a page of ten runs took 20 s to load): past
    SVG_SHOWN_BYTES the page shows the figure's PNG and links both."""
    import harness.leaderboard.figures as figures

    page = (site[0] / "index.html").read_text()
    shown = re.findall(r'<img src="figures/([^"]+)"', page)
    assert shown and all(name.endswith(".svg") for name in shown)  # the demo's figures are light
    monkeypatch.setattr(figures, "SVG_SHOWN_BYTES", 1)
    build([run_dir], tmp_path / "heavy")
    heavy = (tmp_path / "heavy" / "index.html").read_text()
    assert re.findall(r'<img src="figures/([^"]+)"', heavy) == [name[:-4] + ".png" for name in shown]
    assert all((tmp_path / "heavy" / "figures" / name).is_file() for name in shown)  # the SVG still linked
    assert all(f'href="figures/{name}"' in heavy for name in shown)


def test_figures_find_each_teachers_rows_in_one_pass_as_a_mask_per_teacher_would():
    """Rows are grouped by (algorithm, teacher) once: the binned and scatter figures of many teachers and merged
    runs took time growing with the square of the teachers (a mask over the whole table per teacher)."""
    from harness.leaderboard.figures import _rows_by

    rng = np.random.default_rng(0)
    nodes = {"algorithm": rng.choice(["gkd", "jsd", "minillm"], 5000),
             "label": rng.choice([f"t{i}" for i in range(40)] + ["é中"], 5000).astype(object)}
    rows = _rows_by(nodes, "algorithm", "label")
    pairs = {(a, t) for a, t in zip(nodes["algorithm"].tolist(), nodes["label"].tolist(), strict=True)}
    assert set(rows) == pairs
    for (a, t), idx in rows.items():
        assert np.array_equal(idx, np.flatnonzero((nodes["algorithm"] == a) & (nodes["label"] == t)))
    assert _rows_by({"algorithm": np.array([], str), "label": np.array([], object)}, "algorithm", "label") == {}


def test_a_binned_figure_of_many_teachers_keeps_each_in_its_bin_and_its_own_colour():
    """60 teachers: each bin's points stay within the bin, every teacher has a colour of its own, and the
    legend below gets room of its own: the panel keeps its height (it collapsed to 1% of the figure; at 100
    teachers matplotlib warned that its layout was not applied)."""
    import io
    import warnings

    from harness.leaderboard.figures import _binned, teacher_colours

    teachers = [f"teacher-{i:02d}" for i in range(60)]
    rng = np.random.default_rng(0)
    n = len(teachers) * 2 * 3 * 2  # teachers x questions x paths x bins
    label = np.repeat(teachers, 12)
    question = np.tile(np.repeat(["q1", "q2"], 6), len(teachers))
    path = np.array([f"{q}-{p}" for q, p in zip(question, np.tile(np.repeat([0, 1, 2], 2), 2 * len(teachers)), strict=True)])
    bins = np.tile([0, 1], n // 2)
    nodes = {"algorithm": np.full(n, "gkd"), "label": label, "alignment": rng.uniform(-1, 1, n), "question_key": question,
             "path_key": path}
    colours = teacher_colours(teachers)
    assert len(set(colours.values())) == len(teachers)
    group = {"algorithms": ["gkd"], "teachers": teachers, "task": "t", "student": "s"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = _binned(group, nodes, colours, bins, [0, 1], ["a", "b"], "bin", "title")
        fig.savefig(io.BytesIO(), format="png")
    assert fig.axes[0].get_position().height > 0.3
    xs = np.concatenate([line.get_xdata() for line in fig.axes[0].lines if line.get_marker() == "o"])
    assert len(xs) == 2 * len(teachers)
    assert np.all(np.abs(xs - np.round(xs)) < 0.4), xs  # every point nearer its own bin than the next


def test_the_scatter_and_correct_vs_incorrect_figures_of_many_teachers_stay_readable():
    """50 teachers: the divergence figure drew a 50-entry legend under each panel (cut off after about 22, and
    matplotlib warned its layout collapsed); it now has one legend of names below the panels. The correct vs
    incorrect panels were 4.2 in wide whatever the teachers (labels printed over each other); now one per row,
    wide enough for their bars."""
    import io
    import warnings

    from harness.leaderboard.figures import DIVERGENCES, correct_vs_incorrect, divergence_scatter, teacher_colours

    teachers = [f"teacher-{i:02d}" for i in range(50)]
    rng = np.random.default_rng(0)
    n = len(teachers) * 20
    nodes = {"algorithm": np.full(n, "gkd"), "label": np.repeat(teachers, 20), "alignment": rng.uniform(-1, 1, n),
             **{d: rng.uniform(0, 1, n) for d in DIVERGENCES}}
    stat = {"mean": 0.1, "lo": -0.1, "hi": 0.3}
    entries = [{"label": t, "algorithm": a, "alignment_correct": stat, "alignment_incorrect": stat,
                "incorrect_minus_correct": {"p_paired": 0.5}} for t in teachers for a in ("gkd", "jsd")]
    group = {"algorithms": ["gkd", "jsd"], "teachers": teachers, "task": "t", "student": "s", "headline_algorithm": "gkd"}
    colours = teacher_colours(teachers)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scatter = divergence_scatter(group, entries, nodes, colours)
        scatter.savefig(io.BytesIO(), format="png")
        bars = correct_vs_incorrect(entries, group, colours)
        bars.savefig(io.BytesIO(), format="png")
    assert not [ax for ax in scatter.axes if ax.get_legend()] and len(scatter.legends) == 1
    assert len(scatter.legends[0].get_texts()) == len(teachers)
    assert scatter.axes[0].get_position().height > 0.2
    left, right = (ax.get_position() for ax in bars.axes[:2])
    assert abs(left.x0 - right.x0) < 1e-6 and bars.get_size_inches()[0] > 0.25 * len(teachers)  # one per row, wide


def test_runs_whose_names_slug_alike_keep_their_own_validation_figures(tmp_path, monkeypatch):
    """`run (copy)` and `run_copy` have the ids run_copy_ and run_copy; their validation figures were both
    saved as run_copy--validation, so one panel showed the other run's figure."""
    from matplotlib.figure import Figure

    import harness.leaderboard.figures as figures
    from harness.leaderboard.merge import load_runs

    dirs = [tmp_path / "run (copy)", tmp_path / "run_copy"]
    for k, d in enumerate(dirs):
        run(RunConfig(limit=2, seed=k), d)
        (d / "validation.json").write_text(json.dumps({"marker": k}))

    def drawn(validation):  # a figure each run's own: 1 or 2 inches wide
        return Figure(figsize=(1 + validation["marker"], 1))

    monkeypatch.setattr(figures, "_stale", lambda validation, results: None)
    monkeypatch.setattr(figures, "validation_figure", drawn)
    (tmp_path / "site").mkdir()
    made = figures.write_validation_figures(load_runs(dirs), tmp_path / "site")
    assert len({m["stem"] for m in made}) == 2
    long = tmp_path / ("日" * 80)  # 240 bytes: its id is cut, and its figure is written
    run(RunConfig(limit=2, seed=5), long)
    (long / "validation.json").write_text(json.dumps({"marker": 0}))
    (made_long,) = figures.write_validation_figures(load_runs([long]), tmp_path / "site")
    assert (tmp_path / "site" / f"{made_long['stem']}.svg").is_file()
    for m in made:
        width = ET.parse(tmp_path / "site" / f"{m['stem']}.svg").getroot().get("width")
        assert width == f"{72 * (1 + m['validation']['marker'])}pt", (m["stem"], width)


def test_a_student_with_a_long_local_path_gets_figure_files_the_filesystem_takes(run_dir, tmp_path):
    """A group id names figure files: a student path of 205 characters made names past 255 and the build failed."""
    from harness.leaderboard.merge import GROUP_ID_CHARS

    copy = tmp_path / "long"
    shutil.copytree(run_dir, copy)
    results = json.loads((copy / "results.json").read_text())
    long = "/" + "b" * 204
    results["student"] = results["config"]["student"] = long
    (copy / "results.json").write_text(json.dumps(results))
    (group,) = build([copy], tmp_path / "site")["groups"]
    assert len(group["id"]) <= GROUP_ID_CHARS and group["student"] == long
    assert all(len(p.name) < 255 for p in (tmp_path / "site" / "figures").iterdir())


def test_a_teacher_named_in_another_script_is_drawn_without_a_warning_per_glyph(run_dir, tmp_path, caplog):
    """A CJK teacher name: matplotlib's font lacks its glyphs and warned once per glyph and figure (60 lines;
    a traceback under PYTHONWARNINGS=error); one log line now, and the figures are written."""
    import logging
    import warnings

    from harness.pipeline import add_teacher

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    teacher = tmp_path / "教师.yaml"
    teacher.write_text("description: a misleading teacher named in Chinese\nmodel: misleading\n", encoding="utf-8")
    add_teacher(copy, str(teacher))
    with warnings.catch_warnings(), caplog.at_level(logging.WARNING, logger="harness"):
        warnings.simplefilter("error")
        build([copy], tmp_path / "site")
    said = [r.getMessage() for r in caplog.records if "cannot draw" in r.getMessage()]
    assert len(said) == 1 and any(p.suffix == ".svg" for p in (tmp_path / "site" / "figures").iterdir())
    assert "教师" in (tmp_path / "site" / "index.html").read_text(encoding="utf-8")


def test_a_model_card_file_named_to_the_filesystems_limit_is_written(run_dir, tmp_path):
    """A 255-byte --out name: the temporary file beside it had 14 more and the write failed."""
    for name in ("c" * 250 + ".yaml", "教" * 80 + ".yaml"):
        target = tmp_path / name
        assert main_model_card(str(run_dir), str(target)) == 0 and target.is_file()


def test_only_the_missing_glyph_warnings_are_taken_from_the_users_filters():
    """Glyph warnings become one log line; any other warning while a figure is saved meets the user's own
    filters (here: error), as before, and is not shown twice."""
    import warnings

    from harness.leaderboard.figures import _glyphs_missing

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with _glyphs_missing():
            warnings.warn("Glyph 25945 (\\N{CJK UNIFIED IDEOGRAPH-6559}) missing from font(s) DejaVu Sans.", UserWarning)
        with pytest.raises(UserWarning, match="something else"), _glyphs_missing():
            warnings.warn("something else", UserWarning)


def test_a_run_of_one_question_ranks_no_teacher_as_resolved(tmp_path):
    """One question gives a mean and no interval: each ranked entry is marked tied with every other (it was
    marked resolved from all, and the page said "no CI overlap with another teacher")."""
    out = tmp_path / "one"
    run(RunConfig(limit=1), out)
    board = merge(load_runs([out]))
    for algorithm in {e["algorithm"] for e in board["entries"]}:
        block = [e for e in board["entries"] if e["algorithm"] == algorithm and e["rank"] is not None]
        assert len(block) >= 2
        for e in block:
            assert e["alignment"]["ci95"] == [None, None]
            assert sorted(e["tied_with"]) == sorted(o["key"] for o in block if o is not e)


def test_the_pooled_difference_the_clustered_test_is_about_is_published_and_checked(run_dir, tmp_path):
    """p_clustered tests incorrect minus correct pooled over every path; that estimate is published beside
    it (results, leaderboard, model card), and a malformed one is refused by name."""
    row = next(r for r in _results(run_dir)["teachers"] if r.get("incorrect_minus_correct"))
    pooled = row["incorrect_minus_correct"]["pooled"]
    assert set(pooled) == {"mean", "ci95", "n_questions"} and pooled["n_questions"] == row["alignment"]["n_questions"]
    assert pooled["ci95"][0] < pooled["mean"] < pooled["ci95"][1]
    (entry,) = [e for e in merge(load_runs([run_dir]))["entries"]
                if (e["teacher"], e["algorithm"]) == (row["teacher"], row["algorithm"])]
    assert entry["incorrect_minus_correct"]["pooled"] == pooled
    bad = _copy(run_dir, tmp_path / "bad")
    results = _results(bad)
    results["teachers"][0]["incorrect_minus_correct"]["pooled"] = {"mean": "x"}
    (bad / "results.json").write_text(json.dumps(results))
    with pytest.raises(ConfigError, match=r"incorrect_minus_correct\.pooled"):
        load_runs([bad])


def test_a_groups_nodes_share_their_strings_and_number_their_keys_in_string_order(run_dir, tmp_path):
    """A string column is read as one str object per distinct value (a str per row took most of a large
    run's memory), and the question and path keys of a group are integers numbering run\\0question and
    run\\0question\\0path in sorted order: the figures group by them exactly as by the strings."""
    from harness.leaderboard.figures import _nodes
    from harness.leaderboard.merge import teacher_labels

    other = tmp_path / "other"
    run(RunConfig(limit=12, seed=3), other)
    runs = load_runs([run_dir, other])
    for r in runs:
        for name in ("question_id", "teacher", "algorithm"):
            column = r.nodes[name]
            assert len({id(x) for x in column}) == len(set(column.tolist())) < len(column)
    nodes = _nodes(runs, teacher_labels(runs))
    ids = np.concatenate([[r.id] * len(r.nodes["question_id"]) for r in runs])
    for key, strings in (
        ("question_key", [f"{i}\x00{q}" for i, q in zip(ids, nodes["question_id"], strict=True)]),
        ("path_key", [f"{i}\x00{q}\x00{p}" for i, q, p in zip(ids, nodes["question_id"], nodes["path_id"], strict=True)]),
    ):
        assert nodes[key].dtype.kind == "i"
        assert np.array_equal(np.unique(np.array(strings), return_inverse=True)[1].reshape(-1), nodes[key])
