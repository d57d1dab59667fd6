"""Context artefacts: solutions written by a named model, and summaries, for teachers' contexts.

They are generated once per question by :func:`build_artefacts`, cached as JSON files in the run
directory and shared by every teacher with the same generation settings.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from harness.backends.base import STUDENT
from harness.config import portable
from harness.safeio import RenderLimit
from harness.teachers.config import TEXT_SUMMARIZERS, TeacherConfig, render, text_summarizer
from harness.wording import finish_command, plural

if TYPE_CHECKING:
    from harness.backends import Backend
    from harness.tasks import Question, Task

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Solution:
    """One solution written by a named model for a question."""

    ids: np.ndarray  # int [P]: its response ids (the stop id, when hit, is the last)
    text: str  # the decoded response, as a context shows it
    outcome: str  # the task's verdict, a name of ``harness.tasks.OUTCOMES``

    @property
    def correct(self) -> bool:
        return self.outcome == "correct"

    @property
    def wrong(self) -> bool:
        """A wrong answer: what a context may show as incorrect (never a cut-off or unreadable response)."""
        return self.outcome == "wrong"


def _sha256(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _digest(obj: object) -> str:
    return _sha256(obj)[:12]


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name.rsplit("/", 1)[-1])[:40]


def solution_key(cfg: TeacherConfig) -> str:
    """Names one set of generated solutions: every teacher with the same settings shares it."""
    # a model inside the checkout is named relative to it: the key names the run's cached files, which must not
    # depend on where the checkout lies
    source = portable(cfg.solution_source)
    settings = [source, cfg.solution_revision, cfg.dtype, cfg.solution_attempts,
                cfg.solution_temperature, cfg.solution_max_new_tokens, cfg.solution_chat_template_options]
    return f"{_slug(source)}-{_digest(settings)}"


def summary_key(cfg: TeacherConfig) -> str:
    """Names one summariser setting: every teacher with the same settings shares its summaries."""
    if cfg.summarizer in TEXT_SUMMARIZERS:
        return cfg.summarizer
    summarizer = portable(cfg.summarizer or "")
    settings = [summarizer, cfg.summarizer_revision, cfg.dtype, cfg.summary_prompt, cfg.summary_temperature,
                cfg.summary_max_new_tokens, cfg.summary_chat_template_options]
    return f"{_slug(summarizer)}-{_digest(settings)}"


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclasses.dataclass
class Artefacts:
    """Generated solutions and summaries, looked up by the teacher settings that produced them."""

    solutions: dict[tuple[str, str], tuple[Solution, ...]] = dataclasses.field(default_factory=dict)  # (solution_key, question id)
    summaries: dict[tuple[str, str], str | None] = dataclasses.field(default_factory=dict)  # (summary_key, text_digest); None: truncated

    def solutions_for(self, cfg: TeacherConfig, question_id: str) -> tuple[list[Solution], list[Solution]]:
        """The first ``correct_solutions`` correct and ``wrong_solutions`` wrong ones, in sampling order."""
        sols = self.solutions.get((solution_key(cfg), question_id))
        if sols is None:
            raise KeyError(f"no solutions generated for teacher {cfg.name!r} on question {question_id!r}: run build_artefacts")
        correct = [s for s in sols if s.correct][: cfg.correct_solutions]
        wrong = [s for s in sols if s.wrong][: cfg.wrong_solutions]
        return correct, wrong

    def summary(self, cfg: TeacherConfig, text: str) -> str | None:
        """The summary of ``text`` under this teacher's summariser; None when none could be made."""
        if cfg.summarizer in TEXT_SUMMARIZERS:
            return text_summarizer(cfg.summarizer)(text)
        return self.summaries.get((summary_key(cfg), text_digest(text)))


def _outcomes(task: Task, question: Question, responses: Sequence[np.ndarray], truncated) -> list[str]:
    """The task's verdict on each response, by name (``harness.tasks.OUTCOMES``)."""
    from harness.tasks import OUTCOMES  # harness.tasks imports harness.teachers

    return [OUTCOMES[o] for o in task.outcomes(question, responses, np.asarray(truncated, bool))]


def _save(path: Path, obj: dict, place: str) -> None:
    """Write a cached file with its place (the run's id, its kind, key and question) and a sha256 of both."""
    from harness.rundir import write_json

    body = {**obj, "place": place}
    write_json(path, {**body, "sha256": _sha256(body)})


def shown_counts(teachers: Sequence[TeacherConfig]) -> tuple[int, int]:
    """How many of the student's own correct and wrong solutions of each path the teachers' contexts are
    built from (and a summarising teacher's summariser summarises): the largest counts any teacher shows."""
    return (max((t.correct_solutions for t in teachers), default=0), max((t.wrong_solutions for t in teachers), default=0))


def _cached(path: Path, field: str, repair: bool, run: Path, place: str):
    """``field`` of a cached solutions or summaries file of the run ``run``, checked for its place, checksum and
    shape; None when there is none or, with ``repair``, when it cannot be read, was written for another place or
    was edited (removed: it is made again, from the same seeds)."""
    from harness.rundir import NotAsWritten, ShardError, why_unreadable
    from harness.tasks import OUTCOMES  # harness.tasks imports harness.teachers

    if not path.exists():
        return None
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(document, dict):
            raise NotAsWritten("not a JSON object")
        stored = document.pop("sha256", None)
        if document.get("place") != place:
            raise NotAsWritten(f"written for {document.get('place')!r}, not for {place!r}: a file copied or renamed")
        if stored != _sha256(document):
            raise NotAsWritten("checksum mismatch: edited after it was written")
        value = document[field]
        if field == "solutions":
            ok = isinstance(value, list) and all(
                isinstance(x, dict) and isinstance(x.get("ids"), list) and all(isinstance(i, int) for i in x["ids"])
                and isinstance(x.get("text"), str) and x.get("outcome") in OUTCOMES for x in value)
        else:
            ok = isinstance(value, dict) and all(isinstance(v, (str, type(None))) for v in value.values())
        if not ok:
            raise NotAsWritten(f"its {field} are not as odiag writes them")
    except (OSError, ValueError, KeyError, TypeError, NotAsWritten) as exc:
        why = "empty file" if path.is_file() and path.stat().st_size == 0 else why_unreadable(exc)
        if not repair:
            raise ShardError(f"{path}: corrupt cached {field} ({why}); remove it and give the command again (they are "
                             f"made again from the same seeds), or drop and make them again with "
                             f"{finish_command(run, '--repair')}") from None
        log.warning("%s: corrupt cached %s (%s): dropped, making them again", path, field, why)
        path.unlink()
        return None
    return value


def build_artefacts(
    task: Task,
    teachers: Sequence[TeacherConfig],
    questions: Sequence[Question],
    backend: Backend,
    cache_dir: str | Path,
    seed: int,
    run_id: str,
    student_solutions: Mapping[str, Sequence[np.ndarray]] | None = None,
    repair: bool = False,
    judged_by: Mapping | None = None,
) -> Artefacts:
    """Generate (or load from ``cache_dir``) every solution and summary the teachers' contexts need.

    Solutions from a named model: ``solution_attempts`` samples per question from the student's
    prompt (under the source's chat options), scored by the task, in one backend call for every
    source and question not cached. Summaries: of each solution a summarising teacher may show,
    namely the named model's first correct/wrong ones, and ``student_solutions[question id]`` (the
    student's own responses the pipeline will show to self-teachers). A model summary is one
    seeded sample; a truncated one is recorded and never shown. Files are written atomically as
    ``cache_dir/solutions/<key>/<question>.json`` and ``cache_dir/summaries/<key>/<question>.json``,
    so a resumed run reloads them and draws nothing again; one that cannot be read, was edited or was written for
    another run (``run_id``), kind, key or question is refused, naming it, or with ``repair`` made again.
    ``judged_by``: the task record of a run judged by another answer checker than this odiag's (a rescore goes
    on with it), under which no solution may be judged anew.

    ``seed`` is the run's: a draw derives from it, the kind (solutions or summary) and the question (or the
    summarised text), never from the model's name or where its files lie, so runs of different seeds draw
    independent ones, and the same run with its models elsewhere the same ones (teachers whose solution
    settings differ draw from the same seeds: common random numbers, as they share the tree). Files record
    it.
    """
    from harness.backends import SampleRequest
    from harness.seeds import derive_seed
    from harness.tasks.scoring import final_part

    root = Path(cache_dir)
    art = Artefacts()

    def place(kind: str, key: str, question_id: str) -> str:
        return f"{run_id}/{kind}/{key}/{question_id}"

    # 1. solutions written by named models
    sources = {solution_key(t): t for t in teachers if t.solution_source != STUDENT}
    todo = []
    for key, t in sources.items():
        for q in questions:
            path = root / "solutions" / key / f"{q.id}.json"
            if (stored := _cached(path, "solutions", repair, root.parent, place("solutions", key, q.id))) is not None:
                ids = [np.asarray(s["ids"], np.int64) for s in stored]
                art.solutions[(key, q.id)] = tuple(
                    Solution(i, s["text"], s["outcome"]) for i, s in zip(ids, stored, strict=True))
            else:
                todo.append((key, t, q, path))
    if todo and judged_by is not None:
        from harness.rundir import RunDirError

        key, t, q, _ = todo[0]
        raise RunDirError(f"{root.parent}: teacher {t.name!r} needs solutions of {t.solution_source} judged on question "
                          f"{q.id}, and the run's answers were judged by answer extraction version "
                          f"{judged_by.get('answer_checker')}, not this odiag's; use an odiag whose answer extraction is "
                          f"version {judged_by.get('answer_checker')}")
    requests = [
        SampleRequest(
            prefix=task.chat_ids(q.doc["prompt"], t.solution_chat_template_options),
            n=t.solution_attempts,
            seed=derive_seed(seed, "solutions", q.id),
            max_new_tokens=t.solution_max_new_tokens or task.max_new_tokens,
            temperature=t.solution_temperature,
            stop_ids=task.stop_ids,
            model=t.solution_source,
        )
        for key, t, q, path in todo
    ]
    for (key, t, q, path), res in zip(todo, backend.sample(requests) if requests else [], strict=True):
        # a wrong solution shown to a teacher is a wrong answer, never a cut-off or unreadable response
        names = _outcomes(task, q, res.tokens, res.truncated)
        sols = tuple(Solution(np.asarray(ids, np.int64), task.decode(ids), name)
                     for ids, name in zip(res.tokens, names, strict=True))
        _save(path, {"source": t.solution_source, "revision": t.solution_revision, "question_id": q.id, "seed": seed,
                     "solutions": [{"ids": s.ids.tolist(), "text": s.text, "outcome": s.outcome} for s in sols]},
              place("solutions", key, q.id))
        art.solutions[(key, q.id)] = sols
        log.debug("%s: %d/%d solutions from %s are correct", q.id, sum(s.correct for s in sols), len(sols), t.solution_source)
    if todo:
        made = [art.solutions[(key, q.id)] for key, _, q, _ in todo]
        log.info("sampled %d solutions for %d %s from %s: %d correct",
                 sum(map(len, made)), len(todo), plural(len(todo), "question"),
                 ", ".join(sorted({t.solution_source for _, t, _, _ in todo})), sum(s.correct for m in made for s in m))

    # 2. model summaries of every solution a summarising teacher may show
    wanted: dict[tuple[str, str], tuple[TeacherConfig, Question, dict[str, str]]] = {}
    for t in teachers:
        if t.summarizer is None or t.summarizer in TEXT_SUMMARIZERS:
            continue
        key = summary_key(t)
        for q in questions:
            if t.solution_source == STUDENT:
                texts = [task.decode(ids) for ids in (student_solutions or {}).get(q.id, [])]
            else:
                correct, wrong = art.solutions_for(t, q.id)
                texts = [s.text for s in correct + wrong]
            slot = wanted.setdefault((key, q.id), (t, q, {}))
            slot[2].update({text_digest(x): x for x in texts})
    todo = []
    for (key, qid), (t, q, texts) in wanted.items():
        path = root / "summaries" / key / f"{qid}.json"
        stored = _cached(path, "summaries", repair, root.parent, place("summaries", key, qid)) or {}
        for digest, summary in stored.items():
            art.summaries[(key, digest)] = summary
        missing = sorted(set(texts) - set(stored))
        if missing:
            todo.append((key, t, q, path, stored, [(d, texts[d]) for d in missing]))
    # (key, digest): the summariser's prompt; none for a solution too long for any prompt to hold, or one that spells a
    # control token (<|im_end|>), which tokenising would make the real one, ending the summariser's turn
    prompts = {}
    spelt = getattr(task, "spelt_control", None)
    for key, t, q, path, stored, items in todo:
        where = f"{t.file}: key 'summary_prompt'"
        bare = None if spelt is None else task.chat_ids(render(t.summary_prompt, where, question=q.doc["prompt"], solution="x"),
                                                        t.summary_chat_template_options)
        for digest, text in items:
            try:
                ids = task.chat_ids(render(t.summary_prompt, where, question=q.doc["prompt"], solution=text),
                                    t.summary_chat_template_options)
            except RenderLimit:  # the template rendered on a placeholder when loaded: this solution made it too long
                continue
            if spelt is None or spelt(ids, bare) is None:
                prompts[key, digest] = ids
    requests = [
        SampleRequest(
            prefix=prompts[key, digest],
            n=1,
            seed=derive_seed(seed, "summary", digest),
            max_new_tokens=t.summary_max_new_tokens,
            temperature=t.summary_temperature,
            stop_ids=task.stop_ids,
            model=t.summarizer,
        )
        for key, t, q, path, stored, items in todo
        for digest, text in items
        if (key, digest) in prompts
    ]
    results = iter(backend.sample(requests) if requests else [])
    for key, t, q, path, stored, items in todo:
        for digest, _ in items:
            if (key, digest) not in prompts:  # no summary: the teacher skips the question, saying so
                summary = None
            else:
                res = next(results)
                summary = None if res.truncated[0] else (final_part(task.decode(res.tokens[0])) or "").strip() or None
            stored[digest] = summary
            art.summaries[(key, digest)] = summary
        _save(path, {"summarizer": t.summarizer, "revision": t.summarizer_revision, "question_id": q.id, "seed": seed,
                     "summaries": stored}, place("summaries", key, q.id))
    return art
