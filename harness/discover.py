"""What the command line tells a user about odiag itself: config keys, tasks and teachers.

Everything here is generated from the code and files it describes, so it cannot drift from them:
``odiag run --help`` lists each `RunConfig` field with its type, default, doc and allowed values
(`harness.config.field_docs` and `field_rules`, from each field's ``setting(default, doc, *rules)``);
``odiag ls tasks`` reads the task YAMLs; ``odiag ls teachers`` loads every teacher file.
"""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path
from typing import Any

import yaml

MANIFEST = Path(__file__).resolve().parent / "toy_models" / "MANIFEST.json"


# config keys ------------------------------------------------------------------------------------


def _yaml_value(value: Any) -> str:
    """A default as one would write it after ``--set key=``."""
    if value is None:
        return "null"
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_yaml_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def config_help(cls: type, width: int = 100) -> str:
    """Every field of a config dataclass (`harness.config.setting`) as ``name (type, default ...)``,
    its one-line doc and the values it allows, for an argparse epilog."""
    from harness.config import field_docs, field_rules

    rules = field_rules(cls)
    lines = []
    for name, field in field_docs(cls).items():
        lines.append(f"  {name} ({field.type}, default {_yaml_value(field.default)})")
        lines += textwrap.wrap(field.doc or "(undocumented)", width=width, initial_indent=" " * 6, subsequent_indent=" " * 6)
        if rules.get(name):
            lines += textwrap.wrap(f"allowed: {rules[name]}", width=width, initial_indent=" " * 6, subsequent_indent=" " * 8)
    return "\n".join(lines)


# tasks ------------------------------------------------------------------------------------------


class _TaskLoader(yaml.SafeLoader):
    """Reads task YAMLs for listing: lm-eval's ``!function`` tags become their target's name."""


_TaskLoader.add_multi_constructor("!", lambda loader, suffix, node: f"!{suffix} {getattr(node, 'value', '')}")


def task_rows() -> list[dict[str, str]]:
    """One row per task odiag can run: the synthetic task and each ``tasks/odiag_*.yaml``."""
    from harness.tasks import TASKS_DIR, task_file_problem

    rows = [{
        "task": "synthetic", "data": "generated", "answer": "exact", "max_new_tokens": "-",
        "description": "the exact synthetic model of SPEC §7: no data, no model (backend synthetic)",
    }]
    for path in sorted(TASKS_DIR.glob("*.yaml")):
        try:
            if (problem := task_file_problem(path)) is not None:
                raise ValueError(problem)
            cfg = yaml.load(path.read_text(encoding="utf-8"), Loader=_TaskLoader) or {}
            if not isinstance(cfg, dict):
                raise ValueError(f"expected a mapping at the top level, got a {type(cfg).__name__}")
            odiag = ((cfg.get("metadata") or {}).get("odiag")) or {}
            data = str(cfg.get("dataset_path") or ("generated" if cfg.get("custom_dataset") else "?"))
            if cfg.get("dataset_name"):
                data += f"/{cfg['dataset_name']}"
            length = (cfg.get("generation_kwargs") or {}).get("max_gen_toks")
            rows.append({
                "task": str(cfg.get("task", path.stem)),
                "data": data,
                "answer": str(odiag.get("answer_type", "?")) + (", thinking" if odiag.get("thinking") else ""),
                "max_new_tokens": f"{length:,}" if isinstance(length, int) else "?",
                "description": str(odiag.get("description") or _first_sentence(path)),
            })
        except (yaml.YAMLError, OSError, ValueError, AttributeError, TypeError) as exc:
            rows.append(_unreadable({"task": path.stem, "data": "?", "answer": "?", "max_new_tokens": "?"}, path, exc))
    return rows


def _unreadable(row: dict[str, str], path: Path, exc: BaseException) -> dict[str, str]:
    """A listing's row for a file that cannot be read: the others are still listed, this one says why."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        exc = f"not valid YAML: {exc.problem} at line {exc.problem_mark.line + 1}"
    why = " ".join(str(exc).replace(f"{path}: ", "").replace(str(path), path.name).split())
    return {**row, "description": f"cannot be read: {why if len(why) <= 100 else why[:97] + '...'}"}


def _first_sentence(path: Path) -> str:
    head = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        head.append(line.lstrip("#").strip())
    text = " ".join(head)
    match = re.match(r"(.+?[.;])(\s|$)", text)
    return (match.group(1) if match else text).rstrip(".;")


# teachers ---------------------------------------------------------------------------------------


def model_size(model: str | None) -> str:
    """A model's size where known: from a hub id (``Qwen/Qwen3-14B`` -> 14B) or the toy manifest."""
    if not model:
        return ""
    match = re.search(r"(?<![A-Za-z0-9.])(\d+(?:\.\d+)?)\s*([BbMm])(?![A-Za-z0-9])", model.split("/")[-1])
    if match:
        return f"{match.group(1)}{match.group(2).upper()}"
    try:
        manifest = json.loads(MANIFEST.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    entry = manifest.get(Path(model).name) if Path(model).parent.resolve() == MANIFEST.parent else None
    if entry and entry.get("parameters"):
        from harness.costplan import parameters_text

        return parameters_text(entry["parameters"])
    return ""


def _model(model: str | None) -> str:
    from harness.config import portable

    if model is None:
        return "-"
    size = model_size(model)
    shown = portable(model)
    return f"{shown} ({size})" if size else shown


def teacher_rows() -> list[dict[str, str]]:
    """One row per teacher file in ``teachers/``: what it needs to run."""
    from harness.backends.base import STUDENT
    from harness.errors import ConfigError
    from harness.teachers import TEACHER_DIR, TEXT_SUMMARIZERS, load_teacher

    rows = []
    for path in sorted(TEACHER_DIR.glob("*.yaml")):
        try:
            t = load_teacher(str(path))
        except ConfigError as exc:
            rows.append(_unreadable({"teacher": path.stem, "model": "?", "solutions": "?", "summariser": "?"}, path, exc))
            continue
        needs = []
        if t.correct_solutions:
            needs.append(f"{t.correct_solutions} correct")
        if t.wrong_solutions:
            needs.append(f"{t.wrong_solutions} wrong")
        if needs:
            source = "the student's own" if t.solution_source == STUDENT else f"by {_model(t.solution_source)}"
            solutions = f"{' + '.join(needs)} ({source})"
        else:
            solutions = "-"
        if t.summarizer is None:
            summarizer = "-"
        elif t.summarizer in TEXT_SUMMARIZERS:
            summarizer = f"{t.summarizer} (text function)"
        else:
            summarizer = _model(t.summarizer)
        rows.append({
            "teacher": path.stem, "model": "the student" if t.model == STUDENT else _model(t.model),
            "solutions": solutions, "summariser": summarizer, "description": t.description,
        })
    return rows


def table(rows: list[dict[str, str]]) -> str:
    """Rows as aligned columns; the last column is left unpadded."""
    if not rows:
        return ""
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(r[k]) for r in rows)) for k in keys[:-1]}
    fmt = lambda r: "  ".join([*(f"{r[k]:<{widths[k]}}" for k in keys[:-1]), r[keys[-1]]]).rstrip()
    return "\n".join([fmt({k: k for k in keys}), *(fmt(r) for r in rows)])


def main_ls(what: str) -> int:
    """``odiag ls tasks`` / ``odiag ls teachers``."""
    if what == "tasks":
        print(table(task_rows()))
        print("\nrun one: odiag run --set task=NAME --set backend=hf --set student=MODEL --out DIR")
    else:
        print(table(teacher_rows()))
        print("\nuse them: odiag run --set teachers=[NAME,NAME] ... (or a path to any teacher YAML)")
    return 0
