"""What the command line tells a user about odiag itself: config keys, tasks and teachers.

Everything here is generated from the code and files it describes, so it cannot drift from them:
``odiag run --help`` lists each `RunConfig` field with its type, default and doc (a field's
``metadata["doc"]`` when it has one, else its attribute docstring or trailing ``# comment`` in the
source); ``odiag ls tasks`` reads the task YAMLs; ``odiag ls teachers`` loads every teacher file.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import json
import re
import textwrap
import tokenize
import typing
from pathlib import Path
from typing import Any

import yaml

MANIFEST = Path(__file__).resolve().parent / "toy_models" / "MANIFEST.json"


# config keys ------------------------------------------------------------------------------------


def field_docs(cls: type) -> dict[str, str]:
    """One line of documentation per dataclass field: ``metadata["doc"]``, else the string literal
    right after the field (an attribute docstring), else the field line's trailing comment."""
    from_source: dict[str, str] = {}
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        source = ""
    if source:
        comments: dict[int, str] = {}
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                comments[tok.start[0]] = tok.string.lstrip("#").strip()
        (node,) = ast.parse(source).body
        body = node.body
        for i, stmt in enumerate(body):
            if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
                continue
            nxt = body[i + 1] if i + 1 < len(body) else None
            if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
                from_source[stmt.target.id] = " ".join(nxt.value.value.split())
            else:
                lines = range(stmt.lineno, (stmt.end_lineno or stmt.lineno) + 1)
                found = [comments[n] for n in lines if n in comments]
                if found:
                    from_source[stmt.target.id] = found[-1]
    out = {}
    for f in dataclasses.fields(cls):
        doc = f.metadata.get("doc") if f.metadata else None
        out[f.name] = " ".join(str(doc).split()) if doc else from_source.get(f.name, "")
    return out


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


def _yaml_value(value: Any) -> str:
    """A default as one would write it after ``--set key=``."""
    if value is dataclasses.MISSING:
        return "(required)"
    if value is None:
        return "null"
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_yaml_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _type_name(f: dataclasses.Field) -> str:
    if isinstance(f.type, str):  # annotations as written (``from __future__ import annotations``)
        return f.type
    if typing.get_args(f.type) or not hasattr(f.type, "__name__"):
        return str(f.type).replace("typing.", "")
    return f.type.__name__


def config_help(cls: type, width: int = 100) -> str:
    """Every field of ``cls`` as ``name (type, default ...)`` and its doc, for an argparse epilog."""
    docs = field_docs(cls)
    lines = []
    for f in dataclasses.fields(cls):
        lines.append(f"  {f.name} ({_type_name(f)}, default {_yaml_value(_default(f))})")
        doc = docs.get(f.name) or "(undocumented)"
        lines += textwrap.wrap(doc, width=width, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return "\n".join(lines)


# tasks ------------------------------------------------------------------------------------------


class _TaskLoader(yaml.SafeLoader):
    """Reads task YAMLs for listing: lm-eval's ``!function`` tags become their target's name."""


_TaskLoader.add_multi_constructor("!", lambda loader, suffix, node: f"!{suffix} {getattr(node, 'value', '')}")


def task_rows() -> list[dict[str, str]]:
    """One row per task odiag can run: the synthetic task and each ``tasks/odiag_*.yaml``."""
    from harness.lmeval_bridge import TASKS_DIR

    rows = [{
        "task": "synthetic", "data": "generated", "answer": "exact", "max_new_tokens": "-",
        "description": "the exact synthetic model of SPEC §7: no data, no model (backend synthetic)",
    }]
    for path in sorted(TASKS_DIR.glob("*.yaml")):
        cfg = yaml.load(path.read_text(), Loader=_TaskLoader) or {}
        odiag = ((cfg.get("metadata") or {}).get("odiag")) or {}
        data = cfg.get("dataset_path") or ("generated" if cfg.get("custom_dataset") else "?")
        if cfg.get("dataset_name"):
            data += f"/{cfg['dataset_name']}"
        rows.append({
            "task": str(cfg.get("task", path.stem)),
            "data": data,
            "answer": str(odiag.get("answer_type", "?")) + (", thinking" if odiag.get("thinking") else ""),
            "max_new_tokens": f"{(cfg.get('generation_kwargs') or {}).get('max_gen_toks', '?'):,}",
            "description": str(odiag.get("description") or _first_sentence(path)),
        })
    return rows


def _first_sentence(path: Path) -> str:
    head = []
    for line in path.read_text().splitlines():
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
        manifest = json.loads(MANIFEST.read_text())
    except (OSError, ValueError):
        return ""
    entry = manifest.get(Path(model).name) if Path(model).parent.resolve() == MANIFEST.parent else None
    if entry and entry.get("parameters"):
        return f"{entry['parameters'] / 1e3:.0f}k"
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
    from harness.teachers import TEACHER_DIR, TEXT_SUMMARIZERS, load_teacher

    rows = []
    for path in sorted(TEACHER_DIR.glob("*.yaml")):
        t = load_teacher(str(path))
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
