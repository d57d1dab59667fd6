"""The end-to-end run on the exact synthetic model (SPEC §4, §6): exact values, resume, add-teacher."""

import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from harness.backends import ScoreRequest, ScoreResult
from harness.backends.exact import SyntheticBackend
from harness.config import ConfigError, RunConfig, resolve_run_config
from harness.core import aggregate, alignment_score, gkd_gradient, ideal_gradient
from harness.core.records import NODE_FIELDS
from harness.pipeline import add_teacher, run
from harness.exact_lm import SyntheticLM

CFG = RunConfig(limit=6)


def _strip(results: dict) -> dict:
    out = json.loads(json.dumps(results))
    out.pop("created_at")
    out["counts"].pop("rollouts_this_invocation")
    out["counts"].pop("forward_passes_this_invocation")
    out["counts"].pop("artefact_samples_this_invocation")
    return out


def _results(out: Path) -> dict:
    return _strip(json.loads((out / "results.json").read_text()))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return out, run(CFG, out)


def test_mean_alignment_ci_contains_the_exact_value(finished):
    """Recompute every decision point's GKD alignment from the exact Q on the same support."""
    out, results = finished
    nodes = pq.read_table(out / "nodes.parquet").to_pylist()
    children = pq.read_table(out / "children.parquet").to_pylist()
    paths = {(p["question_id"], p["path_id"]): p["tokens"] for p in pq.read_table(out / "paths.parquet").to_pylist()}
    seeds = {q["id"]: None for q in results["questions"]}
    from harness.tasks.exact import SyntheticTask

    for q in SyntheticTask().questions(CFG.limit):
        seeds[q.id] = q.doc["seed"]
    by_node = {}
    for c in children:
        by_node.setdefault((c["question_id"], c["path_id"], c["position"], c["teacher"]), []).append(c)
    exact_rows = []
    for r in nodes:
        if r["algorithm"] != "gkd":
            continue
        kids = by_node[(r["question_id"], r["path_id"], r["position"], r["teacher"])]
        lm = SyntheticLM(seed=seeds[r["question_id"]])
        state = lm.states(paths[(r["question_id"], r["path_id"])])[r["position"]]
        tok = np.array([c["token"] for c in kids])
        pi, pit = np.array([c["pi"] for c in kids]), np.array([c["pi_teacher"] for c in kids])
        q_exact = lm.exact_q[r["position"], state, tok]
        exact = alignment_score(ideal_gradient(pi, q_exact), gkd_gradient(pi, pit))
        estimated = alignment_score(ideal_gradient(pi, np.array([c["q"] for c in kids])), gkd_gradient(pi, pit))
        assert np.isclose(estimated, r["alignment"], equal_nan=True)
        exact_rows.append({**r, "alignment": exact})
    table = {k: np.array([row[k] for row in exact_rows]) for k in NODE_FIELDS}
    exact_means = {row["teacher"]: row["alignment"]["mean"] for row in aggregate(table)}
    for row in results["teachers"]:
        if row["algorithm"] == "gkd":
            lo, hi = row["alignment"]["ci95"]
            assert lo <= exact_means[row["teacher"]] <= hi, (row["teacher"], lo, hi, exact_means[row["teacher"]])
    means = {r["teacher"]: r["alignment"]["mean"] for r in results["teachers"] if r["algorithm"] == "gkd"}
    assert means["synthetic-helpful"] > 0.2 > -0.2 > means["synthetic-misleading"]


def test_node_columns_follow_the_spec_formulas_from_the_child_table(finished):
    """Every node row's |g*|, teacher advantage, V, |A(s)| and visits equal SPEC §3 written out over its
    rows of children.parquet (π̃, π̃_T renormalised on A(s)): |g*| weighs the weighted alignment (SPEC §5)
    and the teacher advantage is published per teacher, so both must be the node's own."""
    out, _ = finished
    nodes = pq.read_table(out / "nodes.parquet").to_pylist()
    by_node = collections.defaultdict(list)
    for c in pq.read_table(out / "children.parquet").to_pylist():
        by_node[(c["question_id"], c["path_id"], c["position"], c["teacher"])].append(c)
    assert len(nodes) > 50 and max(abs(r["teacher_advantage"]) for r in nodes) > 0.01
    for r in nodes:
        kids = by_node[(r["question_id"], r["path_id"], r["position"], r["teacher"])]
        pi, pit = np.array([c["pi"] for c in kids]), np.array([c["pi_teacher"] for c in kids])
        q = np.array([c["w"] / c["n"] for c in kids])
        pi, pit = pi / pi.sum(), pit / pit.sum()
        value = pi @ q
        assert r["ideal_norm"] == pytest.approx(np.sqrt(((pi * (q - value)) ** 2).sum()), rel=1e-9, abs=1e-15)
        assert r["teacher_advantage"] == pytest.approx(pit @ q - value, rel=1e-9, abs=1e-12)
        assert r["value"] == pytest.approx(value, rel=1e-12)
        assert r["n_actions"] == len(kids) and r["visits"] == sum(c["n"] for c in kids)


def test_one_forward_pass_per_teacher_per_path(finished):
    _, results = finished
    c = results["counts"]
    teachers = len(CFG.teachers)
    assert c["teacher_forward_passes"] == teachers * c["paths"]
    # counted at the backend: each synthetic teacher model scored each path exactly once
    assert c["forward_passes_this_invocation"] == {"student": c["paths"], "helpful": c["paths"], "misleading": c["paths"]}
    assert c["rollouts_this_invocation"] == c["rollouts"]
    assert c["decision_points"] > 50


def test_results_follow_the_contract(finished):
    _, results = finished
    assert results["schema_version"] == "odiag.results/1"
    assert results["config"]["n_target"] == 100 and len(results["config_hash"]) == 16
    for key in ("questions", "paths", "decision_points", "rollouts", "tokens_generated", "teacher_forward_passes"):
        assert results["counts"][key] > 0
    row = results["teachers"][0]
    for key in ("alignment", "weighted_alignment", "alignment_correct", "alignment_incorrect",
                "incorrect_minus_correct", "teacher_advantage", "divergence_correlations", "rank"):
        assert key in row
    assert set(row["divergence_correlations"]) == {"kl", "reverse_kl", "js", "tv", "prob_cosine"}
    budget = results["questions"][0]["budget"]
    assert budget and all({"window", "rollouts", "tokens_generated"} <= set(b) for b in budget)


def test_node_and_child_tables_are_written_from_columns_with_their_declared_types(finished, tmp_path):
    """The records are held as one array per field (a dict per row took ~760 B: 1.6 M rows of a 250-question,
    50-teacher run held 1.2 GB), and written with the types NODE_DTYPES and CHILD_DTYPES declare, also when
    empty (an empty table was written with untyped columns). decision_points counts distinct positions."""
    import pyarrow as pa

    from harness.core.records import CHILD_DTYPES, CHILD_FIELDS, NODE_DTYPES, concat
    from harness.results import write_outputs

    out, results = finished
    arrow = {"string": pa.string(), "int64": pa.int64(), "bool": pa.bool_(), "float64": pa.float64()}
    nodes, children = pq.read_table(out / "nodes.parquet"), pq.read_table(out / "children.parquet")
    assert nodes.schema == pa.schema([(f, arrow[t]) for f, t in NODE_DTYPES.items()])
    assert children.schema == pa.schema([(f, arrow[t]) for f, t in CHILD_DTYPES.items()]) and children.column_names == list(CHILD_FIELDS)
    rows = nodes.to_pylist()
    assert results["counts"]["decision_points"] == len({(r["question_id"], r["path_id"], r["position"]) for r in rows})
    write_outputs(tmp_path, {}, concat([], NODE_DTYPES), concat([], CHILD_DTYPES), [])
    for name, dtypes in (("nodes.parquet", NODE_DTYPES), ("children.parquet", CHILD_DTYPES)):
        empty = pq.read_table(tmp_path / name)
        assert empty.num_rows == 0 and empty.schema == pa.schema([(f, arrow[t]) for f, t in dtypes.items()])


class Crash(Exception):
    pass


class CrashingBackend(SyntheticBackend):
    """Dies after a number of backend calls: a kill between two atomic writes."""

    def __init__(self, calls: int):
        super().__init__()
        self.left = calls

    def _tick(self):
        self.left -= 1
        if self.left < 0:
            raise Crash

    def sample(self, requests):
        self._tick()
        return super().sample(requests)

    def score(self, requests):
        self._tick()
        return super().score(requests)


@pytest.mark.parametrize("calls", [0, 1, 2])
def test_interrupted_runs_resume_to_identical_results(finished, tmp_path, calls):
    reference = _results(finished[0])
    with pytest.raises(Crash):
        run(CFG, tmp_path, backend=CrashingBackend(calls))
    resumed = run(CFG, tmp_path)
    assert _strip(resumed) == reference
    assert resumed["counts"]["rollouts_this_invocation"] < reference["counts"]["rollouts"] or calls == 0


def test_a_stop_in_the_initial_phase_keeps_the_questions_of_its_finished_calls(finished, tmp_path, monkeypatch):
    """The initial rollouts were one backend call for every question, stored when it returned: a stop (a kill,
    a device out of memory) late in it lost the whole phase. They are sampled in bounded calls, each call's
    questions stored as it returns; resumed, nothing stored is drawn again and the results are the same."""
    from harness import targeted

    reference = _results(finished[0])
    monkeypatch.setattr(targeted, "CALL_ROLLOUTS", 2 * CFG.n_initial)  # two questions a call
    with pytest.raises(Crash):
        run(CFG, tmp_path, backend=CrashingBackend(2))  # the third call of the initial phase fails
    assert len(list((tmp_path / "shards").glob("*/initial.npz"))) == 4
    resumed = run(CFG, tmp_path)
    assert _strip(resumed) == reference
    assert resumed["counts"]["rollouts_this_invocation"] == reference["counts"]["rollouts"] - 4 * CFG.n_initial


def test_a_stop_in_the_teacher_passes_keeps_the_passes_of_its_finished_calls(finished, tmp_path, monkeypatch):
    """The teacher passes were one backend call for every path of every question, stored when it returned: a stop
    late in the phase lost all of it, and the call held every pass at once. They are scored in calls of a
    bounded number of positions, each call's passes stored as it returns; resumed, none is scored again."""
    import harness.pipeline as pipeline

    reference = _results(finished[0])
    monkeypatch.setattr(pipeline, "CALL_POSITIONS", 1)  # one pass a call
    with pytest.raises(Crash):
        run(CFG, tmp_path, backend=CrashingBackend(1 + 5))  # the initial rollouts, five passes, then a failure
    assert len(list((tmp_path / "shards").glob("*/score-*.npz"))) == 5
    resumed = run(CFG, tmp_path)
    assert _strip(resumed) == reference
    passes = [sum(r["counts"]["forward_passes_this_invocation"].values()) for r in (resumed, finished[1])]
    assert passes[0] == passes[1] - 5


class TopIdsOnly(SyntheticBackend):
    """The exact scores, keeping at each position what a top-1 backend would: the response token, each model's
    most likely id, and a fill's extra ids. Children enriched for one teacher lie outside the others' ids."""

    def score(self, requests):
        out = []
        for r, res in zip(requests, super().score(requests), strict=True):
            keep = []
            for k in range(len(r.response)):
                ids, lp, ref = res.at(k)
                wanted = {int(r.response[k]), *(np.asarray(r.extra_ids[k]).tolist() if r.extra_ids is not None else
                                                 [int(ids[np.argmax(lp)])] + ([] if ref is None else [int(ids[np.argmax(ref)])]))}
                keep.append(res.offsets[k] + np.flatnonzero(np.isin(ids, sorted(wanted))))
            at = np.concatenate(keep)
            out.append(ScoreResult(ids=res.ids[at], offsets=np.concatenate([[0], np.cumsum([len(x) for x in keep])]),
                                   logprobs=res.logprobs[at], divergences=res.divergences,
                                   reference_logprobs=None if res.reference_logprobs is None else res.reference_logprobs[at]))
        return out


def test_a_fill_pass_request_is_built_when_its_call_is_made(tmp_path, monkeypatch):
    """A fill's request holds a [positions x ids] array of the ids it scores: built for every path and model
    before the first call, they all stayed in memory through the phase. Each is now built when its call is
    made, and the results are the same."""
    import harness.pipeline as pipeline

    built, calls = [], []

    class Counted(ScoreRequest):
        def __init__(self, *args, **kw):
            super().__init__(*args, **kw)
            if self.extra_ids is not None:
                built.append(self)

    class Watching(TopIdsOnly):
        def score(self, requests):
            if any(r.extra_ids is not None for r in requests):
                calls.append((len(built), len(requests)))
            return super().score(requests)

    reference = run(CFG, tmp_path / "reference", backend=TopIdsOnly())
    assert reference["counts"]["fill_forward_passes"] > 2
    monkeypatch.setattr(pipeline, "ScoreRequest", Counted)
    monkeypatch.setattr(pipeline, "CALL_POSITIONS", 1)  # one pass a call
    assert _strip(run(CFG, tmp_path / "run", backend=Watching())) == _strip(reference)
    assert len(calls) == reference["counts"]["fill_forward_passes"] and calls == [(i + 1, 1) for i in range(len(calls))]


def test_a_pass_corrupt_when_its_fill_reads_its_context_under_repair_is_named_as_such(tmp_path, monkeypatch):
    """A fill pass reads the context its path's pass was scored with from that pass's shard, when its call is
    made. Corrupt by then, under --repair it is dropped and named, as when a pass is read back (it was a
    TypeError); the same command scores it again, to the same results."""
    import harness.rundir as rundir
    from harness.rundir import RunDirError

    reference = _strip(run(CFG, tmp_path / "reference", backend=TopIdsOnly()))
    save_all, spoiled = rundir.RunDir.save_all, []

    def spoiling_save_all(self, shards):
        shards = list(shards)
        save_all(self, shards)
        for question, name, _ in shards:
            if name.startswith("score-"):  # held in memory: the run reads none of them back before the fills
                self.shard(question, name).write_bytes(b"not a shard")
                spoiled.append(self.shard(question, name))

    monkeypatch.setattr(rundir.RunDir, "save_all", spoiling_save_all)
    with pytest.raises(RunDirError, match=r"score-p\d+-[\w-]+\.npz: corrupt when read back, and dropped \(--repair\); odiag run "):
        run(CFG, tmp_path / "run", backend=TopIdsOnly(), repair=True)
    monkeypatch.setattr(rundir.RunDir, "save_all", save_all)
    assert _strip(run(CFG, tmp_path / "run", backend=TopIdsOnly(), repair=True)) == reference


def test_a_run_holding_part_of_its_passes_reads_the_rest_back_to_the_same_results(finished, tmp_path, monkeypatch):
    """Every path's passes were held in memory from the teacher passes to the records: a run's host memory grew
    with its questions (AIME 2025 with eight teachers: up to 59 GiB). A run holds at most HELD_PASS_BYTES of them
    and reads the others back from their shards; held to half of them, or to none, it gives the same results.
    The first passes stay held: every phase reads them in the same order, which would leave a cache that let
    the least recently used go without the pass asked for next, every time."""
    import harness.rundir as rundir

    stored = [rundir.score_result(np.load(p)) for p in finished[0].glob("shards/*/*.npz") if p.name.startswith(("score-", "fill-"))
              and "skip" not in np.load(p).files]
    total = sum(rundir._nbytes(res) for res in stored)
    put, load = rundir.PassCache.put, rundir.RunDir.load
    reads = {}
    for bound in (0, total // 2):
        held, read_back = [], []

        def counted_put(self, question, name, res):
            put(self, question, name, res)
            held.append(self._bytes)

        def counted_load(self, question, name):
            shard = load(self, question, name)
            if shard is not None and name.startswith(("score-", "fill-")):
                read_back.append(name)
            return shard

        monkeypatch.setattr(rundir, "HELD_PASS_BYTES", bound)
        monkeypatch.setattr(rundir.PassCache, "put", counted_put)
        monkeypatch.setattr(rundir.RunDir, "load", counted_load)
        out = tmp_path / str(bound)
        assert _strip(run(CFG, out)) == _results(finished[0])
        passes = len([p for p in out.glob("shards/*/*.npz") if p.name.startswith(("score-", "fill-"))])
        assert max(held) <= bound and len(read_back) > passes
        reads[bound] = len(read_back)
    # half the passes held, about half as many read back (a least-recently-used cache read back as many as none)
    assert reads[total // 2] < 0.6 * reads[0], reads


def test_a_pass_corrupt_when_read_back_under_repair_is_named_as_such_and_made_again(finished, tmp_path, monkeypatch):
    """A pass shard sound when stored can be corrupt when the run reads it back (held passes are bounded). With
    --repair it is dropped, and the run stops naming it as corrupt, not as removed by someone else; the same
    command then scores it again, to the same results."""
    import harness.rundir as rundir
    from harness.rundir import RunDirError

    save_all = rundir.RunDir.save_all
    spoiled = []

    def spoiling_save_all(self, shards):
        shards = list(shards)
        save_all(self, shards)
        for question, name, _ in shards:
            if name.startswith("score-") and not spoiled:
                self.shard(question, name).write_bytes(b"not a shard")
                spoiled.append(self.shard(question, name))

    monkeypatch.setattr(rundir, "HELD_PASS_BYTES", 0)
    monkeypatch.setattr(rundir.RunDir, "save_all", spoiling_save_all)
    with pytest.raises(RunDirError) as err:
        run(CFG, tmp_path, repair=True)
    assert str(err.value).startswith(f"{spoiled[0]}: corrupt when read back, and dropped (--repair); odiag run ")
    assert not spoiled[0].exists()
    monkeypatch.setattr(rundir.RunDir, "save_all", save_all)
    assert _strip(run(CFG, tmp_path, repair=True)) == _results(finished[0])


STOPS = {signal.SIGKILL: (-signal.SIGKILL, None),
         signal.SIGTERM: (143, "odiag: terminated (SIGTERM); finished work is kept in {}: run the same command again to resume"),
         signal.SIGINT: (130, "odiag: interrupted; finished work is kept in {}: run the same command again to resume")}


STOPPED_RUN = [sys.executable, "-m", "harness.cli", "run", "--set", "limit=24", "--set", "n_target=300", "--out"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted") / "b"
    subprocess.run([*STOPPED_RUN, str(out), "--quiet"], check=True, cwd=Path(__file__).parent.parent)
    return _results(out)


@pytest.mark.parametrize("sig", list(STOPS), ids=lambda s: signal.Signals(s).name)
def test_a_stop_from_outside_mid_run_then_resume_is_identical(tmp_path, uninterrupted, sig):
    """A real `kill -9`, SIGTERM (a scheduler's time limit) or Ctrl-C while shards are being written, then
    the same command again. SIGTERM and Ctrl-C say so in one line that names the directory to resume."""
    out = tmp_path / "a"
    cmd = [*STOPPED_RUN, str(out), "--quiet"]
    proc = subprocess.Popen(cmd, cwd=Path(__file__).parent.parent, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL) and None)  # Ctrl-C reaches it
    deadline = time.monotonic() + 60
    shards = out / "shards"
    while time.monotonic() < deadline and len(list(shards.glob("*/window0-round0.npz"))) < 3:
        time.sleep(0.01)
    os.kill(proc.pid, sig)
    _, err = proc.communicate()
    code, line = STOPS[sig]
    assert proc.returncode == code
    if line is not None:
        assert err.splitlines() == [line.format(out)]
    assert not (out / "results.json").exists()
    subprocess.run(cmd, check=True, cwd=Path(__file__).parent.parent)
    assert _results(out) == uninterrupted
    assert not list(out.rglob("*.tmp"))


def test_same_config_same_results(finished, tmp_path):
    assert _strip(run(CFG, tmp_path)) == _results(finished[0])


def _same_work(mine: Path, theirs: Path) -> bool:
    """Two shards of two runs hold the same arrays (each is bound to its own run: their places and checksums differ)."""
    with np.load(mine) as a, np.load(theirs) as b:
        names = set(b.files) - {"_place", "_sha256"}
        return set(a.files) - {"_place", "_sha256"} == names and all(np.array_equal(a[k], b[k]) for k in names)


def test_a_round_scored_a_few_responses_at_a_time_stores_the_same_tree(finished, tmp_path, monkeypatch):
    """Whole responses are scored in chunks of SCORE_CHUNK_TOKENS (memory bounded however large a round):
    chunks of a few tokens give the same rewards, shards and results as one chunk per round."""
    import harness.targeted as targeted
    from harness.tasks.exact import SyntheticTask

    calls = []
    rewards = SyntheticTask.rewards
    monkeypatch.setattr(SyntheticTask, "rewards", lambda self, q, responses, cut: calls.append(len(responses)) or rewards(self, q, responses, cut))
    run(CFG, tmp_path / "whole")
    whole, calls[:] = len(calls), []
    monkeypatch.setattr(targeted, "SCORE_CHUNK_TOKENS", 50)
    assert _strip(run(CFG, tmp_path / "chunked")) == _results(finished[0])
    assert len(calls) > 10 * whole and max(calls) <= max(CFG.n_initial, CFG.n_target)  # a row at a time, not a round
    for shard in sorted((finished[0] / "shards").rglob("*.npz")):
        assert _same_work(tmp_path / "chunked" / shard.relative_to(finished[0]), shard), shard


def test_a_round_sampled_in_bounded_calls_stores_the_same_tree(finished, tmp_path, monkeypatch):
    """A round's rollouts are sampled in calls of at most CALL_ROLLOUTS rollouts and about CALL_TOKENS tokens
    (a round of many questions would otherwise hold all their tokens at once): calls of a few rollouts give
    the same shards and results as one call per round, and no call holds more than it may."""
    import harness.targeted as targeted

    sizes = []
    sample = SyntheticBackend.sample
    monkeypatch.setattr(SyntheticBackend, "sample",
                        lambda self, requests, on_done=None: sizes.append([r.n for r in requests]) or sample(self, requests, on_done))
    monkeypatch.setattr(targeted, "CALL_ROLLOUTS", 250)
    monkeypatch.setattr(targeted, "CALL_TOKENS", 10**9)
    assert _strip(run(CFG, tmp_path / "by-rollouts")) == _results(finished[0])
    per_call = 250 // CFG.n_initial
    initial = -(-CFG.limit // per_call)
    assert sizes[:initial] == [[CFG.n_initial] * per_call] * initial  # the initial rollouts are bounded alike
    assert all(sum(s) <= 250 or len(s) == 1 for s in sizes) and max(map(len, sizes[initial:])) > 1
    rounds = sum(1 for _ in (finished[0] / "shards").rglob("window*-round*.npz"))
    assert len(sizes) > rounds  # questions and rows of one round split across calls
    for shard in sorted((finished[0] / "shards").rglob("*.npz")):
        assert _same_work(tmp_path / "by-rollouts" / shard.relative_to(finished[0]), shard), shard
    sizes.clear()
    monkeypatch.setattr(targeted, "CALL_ROLLOUTS", 10**9)
    monkeypatch.setattr(targeted, "CALL_TOKENS", 1)  # every request alone: the cut also follows expected tokens
    assert _strip(run(CFG, tmp_path / "by-tokens")) == _results(finished[0])
    assert max(map(len, sizes[1:])) == 1  # after the initial rollouts, one request per call


def test_a_round_sampled_in_several_calls_is_planned_whole_and_its_budget_counted_once(tmp_path, monkeypatch):
    """The targeted phase's total holds a whole round from its first call, and the budget spent counts every
    rollout once: sampled, complete at its forced token, or read back from a stored round."""
    import harness.targeted as targeted

    monkeypatch.setattr(targeted, "CALL_ROLLOUTS", 250)
    cfg = RunConfig(limit=6, budget=3000)
    events = []
    results = run(cfg, tmp_path / "run", on_progress=events.append)
    targeted_events = [e for e in events if getattr(e, "phase", None) == "targeted rollouts"]
    spent = sum(b["rollouts"] for q in results["questions"] for b in q["budget"])
    assert targeted_events[-1].final and targeted_events[-1].spent == spent
    assert [e.spent for e in targeted_events] == sorted(e.spent for e in targeted_events)  # never goes down
    first = next(e for e in targeted_events if e.planned)
    first_round = sum(len(np.load(p)["reward"]) for p in (tmp_path / "run" / "shards").rglob("window0-round0.npz"))
    assert first.planned == first_round  # not just the first call's 250
    (tmp_path / "run" / "results.json").unlink()
    events.clear()
    run(cfg, tmp_path / "run", on_progress=events.append)
    assert [e for e in events if getattr(e, "phase", None) == "targeted rollouts"][-1].spent == spent  # read back


def test_a_phases_pass_shards_are_synced_together_not_one_by_one(tmp_path, monkeypatch):
    """Thousands of teacher passes each synced with their folder took most of their phase: a phase's passes and
    initial rollouts are all written, then each synced and moved into place, each question's folder synced once."""
    import harness.rundir as rundir

    batches, single, synced_dirs = [], [], []
    save, save_all, sync_dir = rundir.RunDir.save, rundir.RunDir.save_all, rundir.sync_dir
    monkeypatch.setattr(rundir.RunDir, "save", lambda self, q, name, **a: single.append(name) or save(self, q, name, **a))
    monkeypatch.setattr(rundir.RunDir, "save_all", lambda self, shards: batches.append(len(shards)) or save_all(self, shards))
    monkeypatch.setattr(rundir, "sync_dir", lambda path: synced_dirs.append(path) or sync_dir(path))
    run(CFG, tmp_path / "run")
    shards = (tmp_path / "run" / "shards")
    scores = sum(1 for _ in shards.rglob("score-*.npz"))
    assert batches == [CFG.limit, scores] and scores > 2 * CFG.limit
    assert not [name for name in single if name.startswith(("score-", "initial"))]
    per_folder = collections.Counter(p.name for p in synced_dirs if p.parent == shards)
    rounds = collections.Counter(p.parent.name for p in shards.rglob("window*-round*.npz"))
    assert all(per_folder[q] == 2 + rounds[q] for q in per_folder)  # two batches and each targeted round


def test_shards_written_together_appear_all_or_none(tmp_path, monkeypatch):
    from harness.rundir import RunDir

    rundir = RunDir.__new__(RunDir)
    rundir.root, rundir._run_id = tmp_path, "r"
    arrays = {"tokens": np.arange(3), "offsets": np.array([0, 3]), "outcome": np.array([1], np.int8),
              "prompt": np.array([5]), "reference": np.array(b"x")}
    calls, real = [], np.savez
    monkeypatch.setattr(np, "savez", lambda f, **kw: calls.append(1) if len(calls) < 2 else (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(Exception, match="No space left"):
        rundir.save_all([(f"q{i}", "initial", arrays) for i in range(3)])
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # neither a shard nor a temporary file
    monkeypatch.setattr(np, "savez", real)
    with pytest.raises(ValueError, match="given twice"):
        rundir.save_all([("q0", "initial", arrays), ("q0", "initial", arrays)])
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]
    rundir.save_all([(f"q{i}", "initial", arrays) for i in range(3)])
    assert all(np.array_equal(rundir.load(f"q{i}", "initial")["tokens"], arrays["tokens"]) for i in range(3))


def test_a_resumed_run_says_it_replays_its_stored_rounds(finished, tmp_path, caplog):
    """Reading back a large tree's rounds takes a while and draws nothing: the log says so first."""
    import shutil

    shutil.copytree(finished[0], tmp_path / "run")
    (tmp_path / "run" / "results.json").unlink()
    rounds = sum(1 for _ in (tmp_path / "run" / "shards").rglob("window*-round*.npz"))
    with caplog.at_level("INFO", logger="harness.pipeline"):
        assert _strip(run(CFG, tmp_path / "run")) == _results(finished[0])
    assert f"reading back {rounds} stored rounds of targeted rollouts (an earlier invocation's)" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO", logger="harness.pipeline"):
        run(CFG, tmp_path / "fresh")
    assert "reading back" not in caplog.text


def test_a_different_config_on_the_same_directory_is_refused(finished):
    with pytest.raises(ConfigError, match="n_target: 100 there, 50 now"):
        run(RunConfig(limit=6, n_target=50), finished[0])


def test_add_teacher_scores_without_rollouts(tmp_path):
    cfg = RunConfig(limit=4, teachers=("synthetic-helpful",))
    before = run(cfg, tmp_path)
    after = add_teacher(tmp_path, "synthetic-misleading")
    assert after["counts"]["rollouts_this_invocation"] == 0
    assert after["counts"]["forward_passes_this_invocation"] == {"misleading": before["counts"]["paths"]}
    assert after["counts"]["rollouts"] == before["counts"]["rollouts"]
    assert {r["teacher"] for r in after["teachers"]} == {"synthetic-helpful", "synthetic-misleading"}
    # the original teacher's numbers do not move
    old = {r["algorithm"]: r["alignment"] for r in before["teachers"]}
    new = {r["algorithm"]: r["alignment"] for r in after["teachers"] if r["teacher"] == "synthetic-helpful"}
    assert json.dumps(old, sort_keys=True) == json.dumps(new, sort_keys=True)


def test_a_rescore_of_an_incomplete_tree_is_refused_before_any_model_loads(tmp_path, monkeypatch):
    """The stored tree lacks a shard: rescore refuses to draw rollouts, and loads no model to say so."""
    import harness.pipeline as pipeline
    from harness.rescore import rescore

    run(RunConfig(limit=2), tmp_path)
    (tmp_path / "shards" / "q001" / "initial.npz").unlink()
    built = []
    real = pipeline.build_backend
    monkeypatch.setattr(pipeline, "build_backend", lambda *a, **k: built.append(a) or real(*a, **k))
    with pytest.raises(ConfigError, match="the stored rollout tree is incomplete"):
        rescore(tmp_path, on_progress=lambda event: None)
    assert built == []


def test_a_rescore_of_scoring_settings_loads_no_model(tmp_path, monkeypatch):
    """A rescore that only re-aggregates reads every pass from the run: it built the backend all the same, to
    describe it in results.json, as the run's last results (which it reports) were set aside while it ran."""
    import harness.pipeline as pipeline
    from harness.rescore import rescore

    sets = {"task": "odiag_toy", "backend": "hf", "student": str(Path(__file__).resolve().parents[1] / "harness" / "toy_models" / "student"), "teachers": ("toy-self-1c",),
            "limit": 1, "n_initial": 8, "budget": 20, "threads": 1}
    run(RunConfig(**sets), tmp_path)
    described = json.loads((tmp_path / "results.json").read_text())["versions"]["backend"]
    built = []
    real = pipeline.build_backend
    monkeypatch.setattr(pipeline, "build_backend", lambda *a, **k: built.append(a) or real(*a, **k))
    results = rescore(tmp_path, ["algorithms=[gkd,forward_kl]"], on_progress=lambda event: None)
    assert built == [] and results["versions"]["backend"] == described
    assert {row["algorithm"] for row in results["teachers"]} == {"gkd", "forward_kl"}


def test_a_rescore_that_drops_a_teacher_loads_no_model(tmp_path, monkeypatch):
    """A drop removes the last results before it re-aggregates: the backend was built to describe itself. Its
    description is the run's last, less the dropped teacher's model (the models the run reads)."""
    import harness.pipeline as pipeline
    from harness.rescore import add_teacher, rescore

    run(RunConfig(limit=1, teachers=("synthetic-helpful",)), tmp_path)
    add_teacher(tmp_path, "synthetic-misleading", on_progress=lambda event: None)
    described = json.loads((tmp_path / "results.json").read_text())["versions"]["backend"]
    assert "misleading" in described["models"]
    built = []
    monkeypatch.setattr(pipeline, "build_backend", lambda *a, **k: built.append(a))
    results = rescore(tmp_path, drop=("synthetic-misleading",), on_progress=lambda event: None)
    expected = {**described, "models": {k: v for k, v in described["models"].items() if k != "misleading"}}
    assert built == [] and results["versions"]["backend"] == expected
    assert {row["teacher"] for row in results["teachers"]} == {"synthetic-helpful"}


def test_a_resumed_run_still_describes_the_engines_whose_rollouts_it_holds():
    """vLLM starts an engine per model it runs: a resume that needed only the teacher's names only it. Its
    description keeps the engines (and the exact scorer) of the run's last description that it did not start
    again; one it started again is described as now. Another backend's last description is not mixed in."""
    from harness.backends.wrappers import LazyBackend

    class Started:
        def __init__(self, described):
            self.described = described

        def describe(self):
            return self.described

    last = {"backend": "vllm", "vllm": "0.1", "engines": {"student": {"seed": 1}, "teacher": {"seed": 1}},
            "scorer": {"backend": "hf"}, "models": {"student": {}, "teacher": {}}}
    now = {"backend": "vllm", "vllm": "0.2", "engines": {"teacher": {"seed": 2}}, "scorer": None,
           "models": {"student": {}, "teacher": {}}}
    def resumed(described):
        backend = LazyBackend(lambda: Started(now), described)
        backend.ready(["teacher"], "sample")  # the resume's work built it
        return backend.describe()

    assert resumed(last) == {**now, "engines": {"student": {"seed": 1}, "teacher": {"seed": 2}}, "scorer": {"backend": "hf"}}
    assert resumed(None) == now and resumed({**last, "backend": "hf"}) == now
    assert LazyBackend(lambda: Started(now), last).describe() == last  # never built: the last, as it is


def test_config_overrides_and_errors(tmp_path):
    cfg = resolve_run_config(None, ["n_target=7", "teachers=[synthetic-helpful]", "limit=null"])
    assert cfg.n_target == 7 and cfg.teachers == ("synthetic-helpful",) and cfg.limit is None
    with pytest.raises(ConfigError, match="unknown key 'n_targt'"):
        resolve_run_config(None, ["n_targt=7"])
    # None, as the docs write it, is null where a key allows it; an empty value is refused (it meant every question)
    assert resolve_run_config(None, ["limit=None", "budget=none"]).limit is None
    with pytest.raises(ConfigError, match=r"--set 'limit=': no value; give one \(limit=null where the key takes none"):
        resolve_run_config(None, ["limit="])
    with pytest.raises(ConfigError, match=r"key 'n_target' must be int, got 'None'"):
        resolve_run_config(None, ["n_target=None"])
    with pytest.raises(ConfigError, match=r"key 'teachers' must be a list of str, got \['x', 3\]"):
        resolve_run_config(None, ["teachers=[x, 3]"])
    bad = tmp_path / "run.yaml"
    bad.write_text("tau: fast\n")
    with pytest.raises(ConfigError, match=r"run.yaml.*'tau' must be float"):
        resolve_run_config(bad, [])


def test_cli_reports_bad_config_in_one_line(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "harness.cli", "run", "--set", "n_targt=3", "--out", str(tmp_path)],
        capture_output=True, text=True, cwd=Path(__file__).parent.parent,
    )
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "unknown key 'n_targt'" in out.stderr


def test_adaptive_strategy_runs_in_rounds_and_resumes_identically(tmp_path):
    cfg = RunConfig(limit=4, strategy="settle", budget=3000)
    reference = _strip(run(cfg, tmp_path / "ref"))
    rounds = [b["rounds"] for q in reference["questions"] for b in q["budget"]]
    assert max(rounds) >= 2  # settle grows nodes over several rounds
    targeted = [sum(b["rollouts"] for b in q["budget"]) for q in reference["questions"]]
    assert max(targeted) <= 3000  # the budget is never exceeded
    with pytest.raises(Crash):
        run(cfg, tmp_path / "cut", backend=CrashingBackend(3))
    assert _strip(run(cfg, tmp_path / "cut")) == reference


@pytest.mark.slow
def test_every_teacher_is_scored_on_every_decision_point_at_its_exact_probabilities(tmp_path):
    """``score_top_k=1`` keeps one id per model and position, so children enriched for one teacher lie
    outside another teacher's ids and the student's. Fill passes score them: every teacher is scored on
    the same decision points, every child's π and π_T equal a full forward pass over the stored context,
    a resume makes no pass, and a run whose fills are gone is refused by a rescore and mended by a run."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from harness.rescore import rescore
    from harness.rundir import RunDir

    toy = Path(__file__).resolve().parents[1] / "harness" / "toy_models"
    teachers = {"toy-self-1c": toy / "student", "harmful-toy-self-1w": toy / "student", "toy-teacher": toy / "teacher"}
    cfg = RunConfig(task="odiag_toy", backend="hf", student=str(toy / "student"), teachers=tuple(teachers), limit=2,
                    n_initial=8, budget=100, score_top_k=1)
    out = tmp_path / "run"
    results = run(cfg, out)
    counts = results["counts"]
    assert counts["fill_forward_passes"] > 0 and counts["decision_points"] > 0
    assert counts["skipped_nodes"]["missing_teacher_logprob"] == counts["skipped_nodes"]["missing_student_logprob"] == 0
    nodes = pq.read_table(out / "nodes.parquet").to_pylist()
    where = {t: {(r["question_id"], r["path_id"], r["position"]) for r in nodes if r["teacher"] == t} for t in teachers}
    assert len({frozenset(v) for v in where.values()}) == 1 and where["toy-teacher"]

    models = {p: transformers.AutoModelForCausalLM.from_pretrained(p).eval() for p in {str(p) for p in teachers.values()}}
    reader = RunDir(out, plan=None)

    def full(model, context, path):  # log π(· | context + path[:k]) for every k, from one plain forward pass
        with torch.inference_mode():
            logits = models[model](torch.as_tensor(np.concatenate([context, path]))[None]).logits[0].double()
        return torch.log_softmax(logits, dim=-1).numpy()[len(context) - 1 : -1]

    paths = {(p["question_id"], p["path_id"]): np.asarray(p["tokens"]) for p in pq.read_table(out / "paths.parquet").to_pylist()}
    children = pq.read_table(out / "children.parquet").to_pylist()
    for (qid, j), path in paths.items():
        own = reader.load(qid, f"score-p{j}-student")["context"]
        student = full(str(toy / "student"), own, path)
        for t, model in teachers.items():
            shard, mine = reader.load(qid, f"score-p{j}-{t}"), [c for c in children if (c["question_id"], c["path_id"], c["teacher"]) == (qid, j, t)]
            if "skip" in shard:  # its context cannot be built on this path (no solution to show)
                assert not mine
                continue
            teacher = full(str(model), shard["context"], path)
            for c in mine:
                assert c["pi"] == pytest.approx(np.exp(student[c["position"], c["token"]]), abs=1e-4)
                assert c["pi_teacher"] == pytest.approx(np.exp(teacher[c["position"], c["token"]]), abs=1e-4)

    again = run(cfg, out)  # resumed: the fills are stored
    assert again["counts"]["forward_passes_this_invocation"] == {} and again["teachers"] == results["teachers"]
    for p in (out / "shards").glob("*/fill-*.npz"):  # as a run scored before fills
        p.unlink()
    with pytest.raises(ConfigError, match=r"stored passes lack log-probabilities its records read \(\d+ fill pass.*odiag run --config"):
        rescore(out, ["algorithms=[gkd]"])
    mended = run(RunDir.load_config(out), out)  # the refused rescore recorded nothing: the run's own settings
    assert mended["counts"]["skipped_nodes"] == counts["skipped_nodes"]
    assert mended["teachers"] == results["teachers"]

    # an add-teacher stopped in its fill passes (results.json gone, its fills not made): a plain rescore finishes it
    added = add_teacher(out, "toy-self-1c1w")
    (out / "results.json").unlink()
    fills = list((out / "shards").glob("*/fill-*-toy-self-1c1w.npz"))
    assert fills
    for p in fills:
        p.unlink()
    assert rescore(out)["teachers"] == added["teachers"]


def test_skipped_teachers_name_every_path_a_teacher_was_skipped_on():
    """results.json kept path 0's skips only: a teacher skipped on the wrong paths alone went unrecorded."""
    from types import SimpleNamespace

    from harness.questions import Passes
    from harness.results import skipped_teachers
    from harness.tasks import Skip

    few = Skip("needs 3 wrong solutions, the question has 2")
    state = SimpleNamespace(paths=[0, 1, 2, 3], scores=Passes())
    state.scores.update({
        (0, "student"): object(), (2, "wrong3"): few, (3, "wrong3"): few, (0, "wrong3"): object(),
        **{(j, "always"): Skip("no correct solution") for j in range(4)},
    })
    assert skipped_teachers(state) == {"wrong3": "needs 3 wrong solutions, the question has 2 (paths 2, 3 of 4)",
                                       "always": "no correct solution"}


def test_a_round_reads_its_windows_tokens_as_the_whole_path_would_give_them():
    """A round plans one depth window, but built what the passes say of every token of the whole path, each round:
    on an AIME-length path 13 s and GiB a round (bench/planning.py). Built over the window, its rows are the
    whole path's rows inside it, a window past a shorter path's end included; fills, which planning never
    reads, and skipped teachers alike."""
    from types import SimpleNamespace

    from harness.backends import STUDENT, ScoreResult
    from harness.questions import Passes
    from harness.targeted import _scored_tokens
    from harness.tasks import Skip

    rng = np.random.default_rng(3)

    def one(positions, k, teacher):
        ids = np.sort(np.argsort(rng.random((positions, 40)), axis=1)[:, :k], axis=1).reshape(-1)  # distinct per row
        logprobs = rng.normal(-2, 1, positions * k).astype(np.float32)
        return ScoreResult(ids=ids.astype(np.int64), offsets=np.arange(positions + 1, dtype=np.int64) * k,
                           logprobs=logprobs, reference_logprobs=logprobs[::-1].copy() if teacher else None,
                           divergences={"reverse_kl": rng.random(positions)} if teacher else None)

    planners = [SimpleNamespace(name=n) for n in ("a", "b", "skipped")]
    scores = Passes()
    scores[(0, STUDENT)], scores[(0, "a")], scores[(0, "b")] = one(37, 5, False), one(37, 9, True), one(37, 7, True)
    scores[(0, "skipped")] = Skip("no correct solution")
    fills = Passes()
    fills[(0, STUDENT)] = one(37, 3, False)
    state = SimpleNamespace(scores=scores, fills=fills)
    whole = _scored_tokens(state, 0, planners, (0, 37))
    for lo, hi in ((0, 1), (1, 3), (3, 7), (7, 15), (15, 31), (31, 63), (63, 127)):
        part = _scored_tokens(state, 0, planners, (lo, hi))
        inside = (whole.position_S >= lo) & (whole.position_S < hi)
        for a, b in zip((whole.position_S, whole.token_S, whole.pi_S, whole.pi_teacher_S_T, whole.reverse_kl_S_T),
                        (part.position_S, part.token_S, part.pi_S, part.pi_teacher_S_T, part.reverse_kl_S_T), strict=True):
            assert np.array_equal(a[inside], b, equal_nan=True), (lo, hi)
        assert inside.any() == (lo < 37)
