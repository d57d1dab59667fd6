"""Reading what a user hands odiag: YAML, JSON, parquet and prompt templates, under limits.

Every failure is a :class:`~harness.errors.ConfigError` of one line that names the file (or
``--set``) and, where it matters, the key; a value is never shown whole, only an :func:`excerpt`.

- **YAML** (:func:`load_yaml_file`, :func:`parse_yaml_value`): safe tags only; files of at most
  ``MAX_YAML_BYTES``, text only (no NUL byte, UTF-8), a mapping at the top level, brackets nested at
  most ``MAX_YAML_DEPTH`` deep (PyYAML's scanner is quadratic in that depth); aliases may not
  expand the document beyond ``MAX_YAML_NODES`` nodes (a "billion laughs" is refused before it is
  built, in time linear in the file) and may not refer to themselves.
- **JSON and parquet** results (:func:`read_json`, :func:`parquet_bytes`, :func:`parse_parquet`): a
  malformed, truncated or empty file, or one without the columns a reader needs, is named in one line.
- **Templates** (:func:`render_template`, :func:`template_variables`): Jinja2's immutable sandbox
  (no attribute escapes, no mutation of lists or dicts), undefined variables an error, and limits on
  what a template may cost: ``MAX_TEMPLATE_CHARS`` of source, ``MAX_RENDER_CHARS`` of output and of
  any value it builds (``'a' * 10**9`` is refused before it is allocated), integers of at most
  ``MAX_INT_BITS`` bits (``7 ** 99999999`` likewise), ``range()`` of at most ``MAX_RANGE`` items,
  ``MAX_LOOP_ITERATIONS`` loop iterations in all (nested loops included) and ``RENDER_SECONDS`` of
  wall time.
"""

from __future__ import annotations

import contextvars
import functools
import json
import re
import reprlib
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml
from jinja2 import StrictUndefined, TemplateError, UndefinedError, meta, nodes, pass_context
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from jinja2.visitor import NodeTransformer

from harness.errors import ConfigError

EXCERPT_CHARS = 80  # the most of a value an error message shows
MAX_YAML_BYTES = 1 << 20  # a config or teacher file; real ones are a few kB
MAX_SET_BYTES = 1 << 16  # one --set value
MAX_YAML_NODES = 100_000  # nodes of a YAML document with every alias expanded (a scalar weighs 1 per 100 chars)
MAX_YAML_DEPTH = 100  # [ and { nesting: PyYAML's scanner slows quadratically with it, its composer recurses
MAX_TEMPLATE_CHARS = 100_000  # template source
MAX_RENDER_CHARS = 1_000_000  # rendered text, and any string or list a template builds (~250k tokens)
MAX_INT_BITS = 4096  # integers a template computes
MAX_CALL_INT = 1_000_000  # integer arguments of filters and methods (widths, counts)
MAX_RANGE = 10_000  # items of one range()
MAX_LOOP_ITERATIONS = 100_000  # loop iterations of one rendering, all loops together
RENDER_SECONDS = 2.0  # wall time of one rendering


# excerpts ------------------------------------------------------------------------------------------


class _Excerpt(reprlib.Repr):
    def __init__(self, limit: int):
        super().__init__()
        self.maxstring = self.maxother = self.maxlong = limit
        self.maxlist = self.maxtuple = self.maxdict = self.maxset = 6
        self.maxlevel = 3

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 256:  # repr itself is quadratic, and refused past 4300 digits
            return f"<an integer of {x.bit_length()} bits>"
        return super().repr_int(x, level)

    def repr_str(self, x: str, level: int) -> str:
        text = super().repr_str(x, level)
        return text if len(x) <= self.maxstring else f"{text} ({len(x)} characters)"


def excerpt(value: Any, limit: int = EXCERPT_CHARS) -> str:
    """A short repr of ``value``: at most about ``limit`` characters, in time independent of its size."""
    try:
        text = _Excerpt(limit).repr(value)
    except Exception:  # a repr that fails must not hide the error being reported
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit + 20 else text[: limit - 3] + "..."


def _one_line(message: str, limit: int = 200) -> str:
    line = " ".join(str(message).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


# YAML ----------------------------------------------------------------------------------------------


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _check_expansion(root: yaml.Node, where: str) -> None:
    """Refuse a document whose aliases expand it past MAX_YAML_NODES, or refer to themselves.

    Aliases share node objects, so each distinct node's expanded size is computed once (memoised by
    identity): linear in the file, whatever the expansion.
    """
    size: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            on_path.discard(key)
            own = 1 + (len(node.value) // 100 if isinstance(node, yaml.ScalarNode) else 0)
            size[key] = own + sum(size[id(c)] for c in _children(node))
            if size[key] > MAX_YAML_NODES:
                mark = node.start_mark
                raise ConfigError(
                    f"{where}: aliases expand the document past {MAX_YAML_NODES} nodes "
                    f"(at line {mark.line + 1}); write the values out instead of nesting aliases"
                )
            continue
        if key in size:
            continue
        if key in on_path:
            raise ConfigError(f"{where}: an alias refers to itself (line {node.start_mark.line + 1})")
        on_path.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in size)


def _check_unique_keys(root: yaml.Node, where: str, lines: bool = True) -> None:
    """Refuse a mapping that names a key twice: YAML would keep the last value without a word; ``lines``: name
    their lines (a file's; a ``--set`` value has one)."""
    seen_nodes: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen_nodes:  # an alias: checked where it was defined
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[tuple[str, str], int] = {}
            for key, _ in node.value:
                if not isinstance(key, yaml.ScalarNode) or key.value == "<<":
                    continue
                line = key.start_mark.line + 1
                if (key.tag, key.value) in first:
                    earlier = first[key.tag, key.value]
                    said = "" if not lines else f" (lines {earlier} and {line})" if earlier != line else f" (line {line})"
                    raise ConfigError(f"{where}: key {excerpt(key.value)} appears twice{said}; keep one")
                first[key.tag, key.value] = line
        stack.extend(_children(node))


def _bracket_depth(text: str) -> int:
    """How deep ``[`` and ``{`` nest, counted on the raw text (brackets in strings count too: an
    over-estimate that only a text with a hundred unclosed brackets could notice)."""
    depth = deepest = 0
    for m in re.finditer(r"[\[\]{}]", text):
        depth = depth + 1 if m.group() in "[{" else max(depth - 1, 0)
        deepest = max(deepest, depth)
    return deepest


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, with YAML 1.2's floats: PyYAML (YAML 1.1) reads ``1e-3`` and ``2.5e3`` as
    strings, which would refuse ``--set temperature=1e-3`` as not a number."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _load(text: str, where: str, lines: bool = True) -> Any:
    """One YAML document (safe tags only), its nesting and alias expansion checked before it is
    parsed and constructed; ``lines``: refusals name lines (a file's)."""
    if _bracket_depth(text) > MAX_YAML_DEPTH:
        raise ConfigError(f"{where}: YAML nested deeper than {MAX_YAML_DEPTH} levels")
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node, where)
        _check_unique_keys(node, where, lines)
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{where}: not valid YAML: {_one_line(exc.problem or exc.context or 'error', 120)}{at}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML: {_one_line(str(exc), 120)}") from None
    except RecursionError:
        raise ConfigError(f"{where}: YAML nested too deeply") from None
    except ConfigError:
        raise
    except ValueError as exc:  # an integer of more than 4300 digits is the one known case
        why = "an integer of more than 4300 digits" if "digits" in str(exc) else _one_line(str(exc), 120)
        raise ConfigError(f"{where}: bad YAML value: {why}") from None
    finally:
        loader.dispose()


def read_text(path: str | Path, max_bytes: int, kind: str = "file") -> str:
    """The UTF-8 text of a regular file of at most ``max_bytes``; anything else is one line naming it."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{p}: is a directory, expected a {kind}")
    if not p.exists():
        raise ConfigError(f"{p}: no such file")
    if not p.is_file():
        raise ConfigError(f"{p}: not a regular file, expected a {kind}")
    try:
        with p.open("rb") as f:
            raw = f.read(max_bytes + 1)
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read it ({exc.strerror or exc})") from None
    if len(raw) > max_bytes:
        raise ConfigError(f"{p}: larger than {max_bytes} bytes, too large for a {kind}")
    if b"\0" in raw:
        raise ConfigError(f"{p}: binary data, expected a {kind}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not UTF-8 text (byte {exc.start}), expected a {kind}") from None


def load_yaml_file(path: str | Path) -> dict:
    """A YAML file whose top level is a mapping of names to values (an empty file is ``{}``)."""
    text = read_text(path, MAX_YAML_BYTES, "YAML file")
    data = _load(text, str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: expected a mapping of keys to values at the top level, got a {type(data).__name__} ({excerpt(data)})"
        )
    for key in data:
        if not isinstance(key, str):
            raise ConfigError(f"{path}: key {excerpt(key)} is not a name")
    return data


def parse_yaml_value(text: str, where: str) -> Any:
    """One value written as YAML (``--set key=VALUE``), under the same limits as a file."""
    if len(text.encode()) > MAX_SET_BYTES:
        raise ConfigError(f"{where}: value longer than {MAX_SET_BYTES} bytes")
    if "\0" in text:
        raise ConfigError(f"{where}: value contains a NUL character")
    return _load(text, where, lines=False)


# JSON and parquet ----------------------------------------------------------------------------------


def read_json(path: str | Path, max_bytes: int = 1 << 30) -> Any:
    """A JSON file, parsed; a truncated, empty or malformed one is one line naming it."""
    text = read_text(path, max_bytes, "JSON file")
    if not text.strip():
        raise ConfigError(f"{path}: empty, expected JSON")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    except RecursionError:
        raise ConfigError(f"{path}: JSON nested too deeply") from None


def parquet_bytes(path: Path) -> bytes:
    """The bytes of the parquet file ``path``; one line when it is not a file."""
    if not path.is_file():
        raise ConfigError(f"{path}: {'is a directory' if path.is_dir() else 'no such file'}, expected a parquet file")
    return path.read_bytes()


def parse_parquet(path: Path, data: bytes, columns: Iterable[str] = ()):
    """``data``, the bytes read from ``path``, as a pyarrow Table that has every one of ``columns``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError, ValueError) as exc:
        why = str(exc).split("'<Buffer>': ", 1)[-1]  # pyarrow names the in-memory source, not the file
        raise ConfigError(f"{path}: not a readable parquet file ({_one_line(why, 120)})") from None
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise ConfigError(f"{path}: missing column(s) {', '.join(missing)}; not written by this odiag")
    return table


# templates -----------------------------------------------------------------------------------------


class RenderLimit(ConfigError):
    """A template rendered past its size limit (its output, or a value it built, `SizeLimit`): the template's fault,
    or, where its variables hold data of any size (a teacher's solutions), the data's."""


class TemplateLimit(SecurityError):
    """A template exceeded one of the resource limits."""


class SizeLimit(TemplateLimit):
    """A template's output, or a value it built, past ``MAX_RENDER_CHARS``: what its variables hold may be the
    cause (never so for its time, loops, ranges or integers, which are the template's alone)."""


class _Budget:
    """What one rendering has spent so far."""

    def __init__(self) -> None:
        self.deadline = time.monotonic() + RENDER_SECONDS
        self.iterations = 0
        self.output = 0


_BUDGET: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar("odiag_template_budget", default=None)


def _budget() -> _Budget:
    budget = _BUDGET.get()
    if budget is None:  # PROMPTS used outside render_template: a fresh budget per call
        budget = _Budget()
    if time.monotonic() > budget.deadline:
        raise TemplateLimit(f"rendering took longer than {RENDER_SECONDS:g} s")
    return budget


def _size(obj: Any, seen: dict[int, int] | None = None) -> int:
    """Characters and items of a value, counting shared parts every time they appear."""
    if isinstance(obj, str):
        return len(obj)
    if not isinstance(obj, (list, tuple, dict)):
        return 1
    seen = {} if seen is None else seen
    if id(obj) in seen:
        return seen[id(obj)]
    seen[id(obj)] = 0  # a self-reference counts as nothing (immutable templates cannot build one)
    items = [x for kv in obj.items() for x in kv] if isinstance(obj, dict) else obj
    total = len(items) + sum(_size(x, seen) for x in items)
    seen[id(obj)] = total
    return total


def _int_bits(x: Any) -> int:
    return abs(x).bit_length() if isinstance(x, int) and not isinstance(x, bool) else 0


def _check_value(value: Any, what: str) -> Any:
    if _int_bits(value) > MAX_INT_BITS:
        raise TemplateLimit(f"{what} gives an integer of {_int_bits(value)} bits; at most {MAX_INT_BITS}")
    if isinstance(value, (str, list, tuple, dict)) and _size(value) > MAX_RENDER_CHARS:
        raise SizeLimit(f"{what} gives a value of {_size(value)} characters/items; at most {MAX_RENDER_CHARS}")
    return value


def _check_estimate(estimate: int, what: str) -> None:
    if estimate > MAX_RENDER_CHARS:
        raise SizeLimit(f"{what} would make about {estimate} characters/items; at most {MAX_RENDER_CHARS}")


def _check_args(args: Iterable[Any], what: str) -> None:
    for a in args:
        if isinstance(a, int) and not isinstance(a, bool) and abs(a) > MAX_CALL_INT:
            raise TemplateLimit(f"{what} with an integer argument of {excerpt(a, 30)}; at most {MAX_CALL_INT}")


def _format_estimate(fmt: str, args: Iterable[Any]) -> int:
    """An upper bound on the length of ``fmt`` formatted with ``args`` (% or str.format).

    Widths and precisions are numbers in the format string or integer arguments (``*``, ``{:{}}``).
    """
    args = list(args)
    numbers = sum(min(int(d), 10 * MAX_RENDER_CHARS) for d in re.findall(r"\d{1,9}", fmt))
    widths = sum(abs(a) for a in args if isinstance(a, int) and not isinstance(a, bool) and _int_bits(a) < 64)
    return len(fmt) + sum(_size(a) for a in args) + numbers + widths


def _text(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


def _estimate(name: str, value: Any, args: tuple, kwargs: dict, method: bool) -> int | None:
    """Size of what a known amplifying str method (``value.name(*args)``) or filter
    (``value|name(*args)``) would return, before it runs; None when it cannot amplify."""
    s = _text(value) if isinstance(value, str) or name in ("replace", "indent", "wordwrap") else None
    if name == "replace" and s is not None and len(args) >= 2:
        old, new = _text(args[0]), _text(args[1])
        count = s.count(old) if old else len(s) + 1
        return len(s) + count * max(0, len(new) - len(old))
    if name == "indent" and s is not None:
        width = args[0] if args else kwargs.get("width", 4)
        width = width if isinstance(width, int) else len(_text(width))
        return len(s) + (s.count("\n") + 1) * width
    if name == "wordwrap" and s is not None:
        wrap = args[2] if len(args) > 2 else kwargs.get("wrapstring")
        return len(s) * (1 + (len(_text(wrap)) if wrap is not None else 1))
    if name == "expandtabs" and s is not None:
        tab = args[0] if args else kwargs.get("tabsize", 8)
        return len(s) * max(1, tab if isinstance(tab, int) else 1)
    if name == "join":
        if method:  # sep.join(items)
            items, sep = (args[0] if args else ()), value
        else:  # the join filter: items|join(sep)
            items, sep = value, _text(args[0] if args else kwargs.get("d", ""))
        if isinstance(items, (list, tuple)):
            return _size(items) + len(sep) * len(items)
    if name in ("format", "format_map") and s is not None:
        return _format_estimate(s, (*args, *kwargs.values()))
    return None


def _guard_filter(name: str, func: Any) -> Any:
    """``func`` with its arguments and result checked against the limits.

    The wrapper takes the context, which also stops Jinja from running the filter at compile time
    (outside any budget) when its arguments are constants.
    """
    kind = getattr(getattr(func, "jinja_pass_arg", None), "name", None)

    @pass_context
    def guarded(context, value=None, *args, **kwargs):
        _budget()
        what = f"filter {name}"
        _check_args((*args, *kwargs.values()), what)
        estimate = _estimate(name, value, args, kwargs, method=False)
        if estimate is not None:
            _check_estimate(estimate, what)
        first = {"context": (context,), "eval_context": (context.eval_ctx,), "environment": (context.environment,)}
        return _check_value(func(*first.get(kind, ()), value, *args, **kwargs), what)

    return guarded


class _Guard(NodeTransformer):
    """Route loops, ``~`` and literal text through the environment's checks (rewrites the AST)."""

    def __init__(self, environment: PromptEnvironment):
        self.environment = environment

    def _call(self, hook: str, args: list, lineno: int | None) -> nodes.Call:
        call = nodes.Call(nodes.EnvironmentAttribute(hook), args, [], None, None)
        call.set_lineno(lineno or 1)
        call.set_environment(self.environment)
        return call

    def visit_For(self, node: nodes.For) -> nodes.For:
        self.generic_visit(node)
        node.iter = self._call("odiag_loop", [node.iter], node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Call:
        self.generic_visit(node)
        return self._call("odiag_concat", list(node.nodes), node.lineno)

    def visit_Output(self, node: nodes.Output) -> nodes.Output:
        # every piece, literal text included, becomes a call: Jinja cannot fold it into a constant
        # at compile time, so it is counted each time it is output (in a loop, a macro, a block)
        self.generic_visit(node)
        pieces = [nodes.Const(c.data, lineno=c.lineno) if isinstance(c, nodes.TemplateData) else c for c in node.nodes]
        node.nodes = [self._call("odiag_output", [c], c.lineno) for c in pieces]
        return node


class PromptEnvironment(ImmutableSandboxedEnvironment):
    """Jinja2 for prompt text: the immutable sandbox, undefined names an error, resource limits.

    Every output piece passes :meth:`odiag_output`, every loop :meth:`odiag_loop`,
    every call :meth:`call`, ``~`` :meth:`odiag_concat` and ``* ** + %`` :meth:`call_binop`; each
    checks the wall time and the size of what it is about to make.
    """

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self) -> None:
        super().__init__(
            undefined=StrictUndefined, keep_trailing_newline=True, autoescape=False,
            optimized=False,
        )
        self.globals["range"] = self.odiag_range
        self.globals.pop("lipsum", None)  # generates text of any length; prompts have no use for it
        self.filters = {name: _guard_filter(name, f) for name, f in self.filters.items()}

    def _generate(self, source, name, filename, defer_init=False):
        return super()._generate(_Guard(self).visit(source), name, filename, defer_init=defer_init)

    # hooks the rewritten templates call

    def odiag_output(self, value: Any) -> str:
        budget = _budget()
        text = _text(value)
        budget.output += len(text)
        if budget.output > MAX_RENDER_CHARS:
            raise SizeLimit(f"output longer than {MAX_RENDER_CHARS} characters")
        return text

    def odiag_loop(self, iterable: Any) -> Iterator[Any]:
        budget = _budget()
        for item in iterable:
            budget.iterations += 1
            if budget.iterations > MAX_LOOP_ITERATIONS:
                raise TemplateLimit(f"loops ran more than {MAX_LOOP_ITERATIONS} iterations in all")
            if not budget.iterations % 256:
                _budget()
            yield item

    def odiag_concat(self, *parts: Any) -> str:
        _budget()
        texts = [_text(p) for p in parts]
        _check_estimate(sum(map(len, texts)), "~")
        return "".join(texts)

    def odiag_range(self, *args: int) -> range:
        r = range(*args)
        try:
            items = len(r)
        except OverflowError:  # more than sys.maxsize items
            items = float("inf")
        if items > MAX_RANGE:
            shown = ", ".join(excerpt(a, 20) for a in args)
            raise TemplateLimit(f"range({shown}) has {items:.0f} items; at most {MAX_RANGE}")
        return r

    # sandbox overrides

    def call_binop(self, context, operator: str, left: Any, right: Any) -> Any:
        _budget()
        what = f"the operator {operator}"
        if operator == "**" and _int_bits(left) > 1 and isinstance(right, int) and right > 0:
            if _int_bits(left) * right > MAX_INT_BITS:
                raise TemplateLimit(f"{excerpt(left, 20)} ** {excerpt(right, 20)} exceeds {MAX_INT_BITS} bits")
        elif operator == "*":
            if _int_bits(left) and _int_bits(right):
                if _int_bits(left) + _int_bits(right) > MAX_INT_BITS + 1:
                    raise TemplateLimit(f"a product of more than {MAX_INT_BITS} bits")
            else:
                seq, n = (left, right) if isinstance(right, int) else (right, left)
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and n > 0:
                    _check_estimate(_size(seq) * n, f"repetition ({excerpt(seq, 20)} * {excerpt(n, 20)})")
        elif operator == "+" and isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)):
            _check_estimate(_size(left) + _size(right), what)
        elif operator == "%" and isinstance(left, str):
            _check_estimate(_format_estimate(left, right if isinstance(right, (tuple, dict)) else (right,)), what)
        return _check_value(self.binop_table[operator](left, right), what)

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (Jinja's signature)
        _budget()
        target = getattr(__obj, "__wrapped__", __obj)
        name = getattr(target, "__name__", "a function")
        if isinstance(getattr(target, "__self__", None), str):  # a str method, e.g. 'x'.center(10**9)
            what = f"str.{name}()"
            _check_args((*args, *kwargs.values()), what)
            estimate = _estimate(name, target.__self__, args, kwargs, method=True)
            if estimate is not None:
                _check_estimate(estimate, what)
        elif not name.startswith("odiag_"):  # the hooks check their own arguments
            _check_args((*args, *kwargs.values()), f"{name}()")
        return _check_value(super().call(__context, __obj, *args, **kwargs), f"{name}()")


PROMPTS = PromptEnvironment()


@functools.lru_cache(maxsize=256)
def _compiled(source: str):
    return PROMPTS.from_string(source)


def _check_source(source: Any, where: str) -> None:
    if not isinstance(source, str):
        raise ConfigError(f"{where}: a template must be a string, got {type(source).__name__}")
    if len(source) > MAX_TEMPLATE_CHARS:
        raise ConfigError(f"{where}: template of {len(source)} characters; at most {MAX_TEMPLATE_CHARS}")


def _template_error(exc: TemplateError) -> str:
    """A template's syntax error in a few words, with the template's line where Jinja2 gives one."""
    line = getattr(exc, "lineno", None)
    return _one_line(str(exc), 120) + (f", at line {line} of the template" if isinstance(line, int) else "")


def template_variables(source: str, where: str) -> set[str]:
    """The undeclared variables of a template; a syntax error is one line naming ``where``."""
    _check_source(source, where)
    try:
        return meta.find_undeclared_variables(PROMPTS.parse(source))
    except TemplateError as exc:
        raise ConfigError(f"{where}: not a valid Jinja2 template ({_template_error(exc)})") from None
    except RecursionError:
        raise ConfigError(f"{where}: template nested too deeply") from None


def render_template(source: str, where: str, *, undefined_hint: str = "", **variables: Any) -> str:
    """Render prompt text under the limits; any failure (a missing variable or index, a limit, an
    error of the template's own arithmetic) is a ConfigError naming ``where``; a missing variable or
    index also says ``undefined_hint`` (what the variables hold, and the fix)."""
    _check_source(source, where)
    try:
        template = _compiled(source)
    except TemplateError as exc:
        raise ConfigError(f"{where}: not a valid Jinja2 template ({_template_error(exc)})") from None
    except RecursionError:
        raise ConfigError(f"{where}: template nested too deeply") from None
    token = _BUDGET.set(_Budget())
    try:
        return template.render(**variables)
    except SizeLimit as exc:
        raise RenderLimit(f"{where}: template limit: {_one_line(str(exc))}") from None
    except TemplateLimit as exc:
        raise ConfigError(f"{where}: template limit: {_one_line(str(exc))}") from None
    except UndefinedError as exc:
        raise ConfigError(f"{where}: UndefinedError: {_one_line(str(exc))}{undefined_hint}") from None
    except Exception as exc:  # whatever a template does wrong is the template's error, not odiag's
        raise ConfigError(f"{where}: {type(exc).__name__}: {_one_line(str(exc))}") from None
    finally:
        _BUDGET.reset(token)
