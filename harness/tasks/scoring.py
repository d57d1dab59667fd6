"""Answer extraction from what reasoning models actually write: pure functions on text (SPEC §1).

A completion's *final part* is what follows its last ``</think>``; a completion that opens a
``<think>`` block and never closes it has no final part (it never answered). Inside the final part
the answer is, in order of preference, the last non-empty ``\\boxed{...}``, the last explicit statement
("The answer is (B)", "Final answer: 42", "**Answer:** True"), and a closing line that is the answer alone
("**C**", "$70$", "So, no.", "No, because ..."). A statement needs its verb or mark after "answer", at most
five words or asides on (is, would be, a colon, an equals sign, a heading's closing ``**`` or line end), or a
value that closes its line: a later mention of an answer ("Answer (A) is a common mistake") is not one, and
"the answer = 21 + 49" states no value; "the answer would be D" counts only where no firm statement does. Anything else is unparseable: it
scores 0 and is counted (:class:`Verdict`). The AIME comparison reuses lm-eval's ``hendrycks_math``
normalisation (``strip_string``) after comparing integers exactly, for a box that holds one value only
(``\\boxed{70 \\text{ or } 64}`` hedges, and is wrong whichever value comes first).
"""

from __future__ import annotations

import bisect
import dataclasses
import re
import unicodedata

ANSWER_TYPES = ("boolean", "choice", "integer")
# The version of the extraction below, recorded with every run (harness.plan.RunPlan.task_record): a run
# is never resumed, grown or rescored by another version, whose verdicts on new responses would sit beside
# the stored ones. tests/test_tasks.py pins each version's verdicts on a fixed set of completions, so a
# change to any of them fails there until this is raised.
VERSION = 2

_THINK_CLOSE = "</think>"
_THINK_OPEN = "<think>"
# "The answer is", "the final answer:", "Answer -", "**Final Answer**:", "the answer would be" ... (markdown
# emphasis allowed): a verb or a mark must follow "answer", or a heading's closing emphasis ("**Final Answer**"),
# so that a later mention ("Answer (A) is a common mistake", "(Answer yes would need ...)") is no statement.
# Up to five words or asides may come between ("the answer to this problem is", "the answer, then, is", "the answer I
# get is", "the answer (after simplification) is", "Answer (integer):"), never a value
_FILLER = (r"(?:,?\s*(?!(?:yes|no|true|false|choices?|options?)\b)"
           r"(?:I\b|I'[a-z]+|[a-z]{2,}|[a-z]{1,3}(?:[-+*/^][a-z0-9]{1,3})+|\$[^$\n]{1,40}\$|\([^()\n]{0,40}\)"
           r"|\[[^\[\]\n]{0,40}\])){0,5}?,?")
_SOFT = r"(?:would|should|could|might)\s+(?:[a-z]+\s+)?be"  # "the answer would be D": below a firm statement
_MARK = (r"(?:is|was|'s|(?:must|will|can)\s+(?:[a-z]+\s+)?be|" + _SOFT
         + r"|comes?\s+out\s+to|:|=|=>|\u2192|\u2261|\?|-|\u2014)")
_STATEMENT = (r"(?:final\s+answer[ \t]*(?:\*\*|__)?[ \t]*:?[ \t]*(?=\n)"  # a heading line ("### Final Answer")
              r"|(?:final\s+answer|answer)(?:" + _FILLER + r"\s*" + _MARK + r"\s*(?:\*\*|__)?|\s*(?:\*\*|__)"
              # or nothing, where the value closes its line ("answer 7", "Final answer (C)."), not "Answer (A) is wrong"
              r"|[ \t]+(?=[(\[]?[\w,-]+(?:\.[\w,-]+)*[)\]]?[.!*]*[ \t]*(?:\n|\Z))))"
              r"\s*(?:is\s*)?(?:\*\*|__)?\s*[:\-]?\s*(?:\\\[|\$\$)?\s*"  # a display opened on its own line
              # "is definitely C", "is option C", "is clearly the letter (B)"
              r"(?:(?:definitely|clearly|therefore|thus|probably|actually|indeed|simply|really|most\s+likely)\s+)?"
              r"(?:(?:the\s+)?(?:option|choice|letter)\s+)?")
# multiple choice also states its answer as "the correct option is C", "the best choice is (B)"
_CHOICE = r"\b(?:correct|right|best)\s+(?:option|choice)\s*(?:is\b|:)\s*"
# a correction later on a statement's line ("the answer is no, but ... so the answer is True"): a statement of
# its own. Only a word that corrects or concludes opens one; an aside ("the answer is 41 if we count the empty
# set", "note the answer is no longer ambiguous") stays part of the first
_CORRECTION = (r"\b(?:but|so|thus|therefore|hence|actually|wait|instead|finally)\b[\s,:]*(?:no\b[\s,:!]*)?"
               r"(?:on\s+reflection[\s,:]*)?"
               r"(?:the\s+)?(?:correct\s+|final\s+|real\s+)?answer\s*(?:is\b|:|=)\s*")
_BOOL_WORDS = {"true": True, "yes": True, "false": False, "no": False}


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The outcome of scoring one completion."""

    correct: bool  # the extracted answer equals the target
    answer: str | None  # the extracted, normalised answer; None when unparseable


def final_part(text: str) -> str | None:
    """The text after the last ``</think>``; the whole text without a think block; None when a
    ``<think>`` block is opened and never closed (the model was still thinking)."""
    if _THINK_CLOSE in text:
        return text.rsplit(_THINK_CLOSE, 1)[1]
    if _THINK_OPEN in text:
        return None
    return text


def last_boxed(text: str) -> str | None:
    r"""The content of the last non-empty ``\boxed{...}`` (or ``\fbox{...}``), braces balanced; None if none
    (an empty box, "the answer goes in \boxed{}", and one never closed are passed over). One pass over the text,
    however many boxes a looping response opens."""
    starts = [m.start() for m in re.finditer(r"\\(?:boxed|fbox)", text)]
    if not starts:
        return None
    closing, stack = {}, []  # each "{" at its matching "}"
    for i, ch in enumerate(text):
        if ch == "{":
            stack.append(i)
        elif ch == "}" and stack:
            closing[stack.pop()] = i
    opens = sorted(closing.keys() | set(stack))
    for start in reversed(starts):
        rest = text[start : start + 7]
        if rest == "\\boxed " and text[start + 7 : start + 8] != "{":
            end = text.find("$", start + 7)
            content = text[start + 7 : end if end >= 0 else len(text)].strip()  # \boxed 5
        else:
            k = bisect.bisect_left(opens, start)
            at = opens[k] if k < len(opens) else None
            content = text[at + 1 : closing[at]].strip() if at is not None and at in closing else None
        if content:
            return content
    return None


def _unwrap(answer: str) -> str:
    """Strip markup around a short answer: ``\\text{(B)}``, ``**B**``, ``$42$``, trailing dots."""
    answer = re.sub(r"\\(?:text|textbf|mathrm|mathbf)\{([^{}]*)\}", r"\1", answer)
    return answer.strip().strip("*_$ ").rstrip(".").strip()


_PLEASANTRY = r"\W*(?:i\s+)?(?:hope\s+(?:this|that|it)\s+helps|let\s+me\s+know|feel\s+free|good\s+luck)\b"


def _last_line(text: str) -> str | None:
    """The last non-blank line, its markup stripped (a closing verdict: "**True**", "(C)."); a closing pleasantry
    ("Hope this helps!") is not it."""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    while len(lines) > 1 and re.match(_PLEASANTRY, lines[-1], flags=re.IGNORECASE):
        lines.pop()
    return _unwrap(lines[-1]) if lines else None


def _statements(text: str, choice: bool = False) -> list[str]:
    """What follows every "answer is" / "answer:" statement (``choice``: also "the correct option is"), in
    order, up to the end of its line, or to a correction later on that line, which is the next statement."""
    head = rf"(?:{_STATEMENT}|{_CHOICE})" if choice else _STATEMENT
    firm, soft = [], []  # a conditional "the answer would be D" counts only where no firm statement does
    for m in re.finditer(head + r"([^\n]*)", text, flags=re.IGNORECASE):
        rest = m.group(m.lastindex)
        # "Final Answer: The final answer is C. I hope it is correct.": the statement the heading opens
        rest = re.sub(r"^\s*(?:the\s+)?(?:final\s+)?answer\s*(?:is\b|:)\s*", "", rest, flags=re.IGNORECASE)
        cuts = list(re.finditer(_CORRECTION, rest, flags=re.IGNORECASE))
        starts, ends = [0, *(c.end() for c in cuts)], [*(c.start() for c in cuts), len(rest)]
        parts = [rest[a:b] for a, b in zip(starts, ends, strict=True)]
        before = text[text.rfind("\n", 0, m.start()) + 1 : m.start()]  # what its line holds before it
        if re.search(_SOFT, m.group(0)[: m.start(m.lastindex) - m.start()], flags=re.IGNORECASE):
            # and none in a condition or an aside: "(If the memo were unsigned, the answer would be D.)"
            aside = re.search(r"^\W*\(|^\W*note\b|\b(?:if|unless|otherwise|were)\b", before, flags=re.IGNORECASE)
            soft += [] if aside else parts[:1]
            firm += parts[1:]
        elif re.match(r"\W*\(|\W*(?:note|n\.b\.|remark|p\.s\.)\b", before, flags=re.IGNORECASE):
            soft += parts[:1]  # a note or an aside after the answer: "Note: the answer for the smaller case is 16"
            firm += parts[1:]
        else:
            firm += parts
    return soft + firm


# a closing line that is a verdict: "**True**", "No.", "So, no.", "Therefore: False", "No, because ..." (never
# "... is not true.", nor "No one knows")
_CLOSING_VERDICT = r"\W*(?:(?:so|thus|hence|therefore)\b[\s,:]*)?(true|false|yes|no)(?:\W*|[,.;:!]\s.*)"
# ... unless the line takes it back: "No, wait - actually, yes: ..."
_TAKEN_BACK = r"\b(?:wait|actually|rather|instead)\b.*\b(?:true|false|yes|no)\b"


def extract_boolean(text: str) -> bool | None:
    """True/False from ``\\boxed{yes}``, "The answer is False", "**Answer:** No", or a last-line verdict."""
    final = final_part(text)
    if final is None:
        return None
    candidates = []
    if (boxed := last_boxed(final)) is not None:
        candidates.append(boxed)
    candidates += reversed(_statements(final))
    for cand in candidates:
        if (m := re.match(r"\W*(true|false|yes|no)\b", _unwrap(cand), flags=re.IGNORECASE)) is not None:
            return _BOOL_WORDS[m.group(1).lower()]
    if (last := _last_line(final)) and (m := re.fullmatch(_CLOSING_VERDICT, last, flags=re.IGNORECASE | re.DOTALL)) \
            and not re.search(_TAKEN_BACK, last[m.end(1):], flags=re.IGNORECASE):
        return _BOOL_WORDS[m.group(1).lower()]
    return None


def extract_choice(text: str, n_choices: int = 4) -> str | None:
    """The option letter from ``\\boxed{B}``, "The answer is (B)", "the correct option is B", a closing "**B**"
    or "C) text", or a last ``(B)``. A lower-case letter counts in parentheses or alone ("(c)", "answer: c."), never
    as a word ("the answer is a matter of law"); full-width letters count as theirs."""
    final = final_part(text)
    if final is None:
        return None
    final = unicodedata.normalize("NFKC", final)
    letters = "ABCDEFGHIJ"[:n_choices]
    one = rf"\(?([{letters}])\)?(?![A-Za-z0-9])|\(([{letters.lower()}])\)|([{letters.lower()}])\W*$"
    candidates = []
    if (boxed := last_boxed(final)) is not None:
        candidates.append(boxed)
    candidates += reversed(_statements(final, choice=True))
    for cand in candidates:
        if (m := re.match(r"\W*(?:" + one + ")", _unwrap(cand))) is not None:
            return next(g for g in m.groups() if g).upper()
    if (last := _last_line(final)) is not None:
        # "**C**", "(c)", or the option written out: "C) the jurisdiction has rejected ..."
        if (m := re.fullmatch(rf"\W*\(?([{letters}{letters.lower()}])\)?\W*", last)) is not None:
            return m.group(1).upper()
        # ... unless it is the last of a list of options, or one the line rejects ("C) is tempting, but ...")
        lines = [ln for ln in final.strip().splitlines() if ln.strip()]
        shape = lambda line: (m.group(2) if (m := re.match(rf"[*_\s]*([{letters}])([).:])\s", line)) else None)
        listed = len(lines) > 1 and shape(lines[-2]) is not None and shape(lines[-2]) == shape(lines[-1])
        rejected = re.search(r"\b(?:wrong|incorrect|tempting|not|fails?|false|none|would|unless|only\s+if)\b", last,
                             flags=re.IGNORECASE)
        if (m := re.match(rf"\W*\(?([{letters}])[).:]\s", last)) is not None and not listed and not rejected:
            return m.group(1)
    # lm-eval's flexible-extract fallback: the last parenthesised letter in the final part
    found = re.findall(rf"\(([{letters}])\)", final)
    return found[-1] if found else None


def extract_integer(text: str) -> str | None:
    """An integer answer (AIME) from ``\\boxed{70}``, "The answer is 70", "answer: 7"; as a string."""
    final = final_part(text)
    if final is None:
        return None
    # the first integer (70.0 is one), not the start of "3.5", nor of "21 + 49" (an expression, not its value)
    integer = (r"[^\d\-]*?(-?\d+)(?:\.0+)?(?![\d.]*\d)"
               r"(?!\s*(?:[-+*/×·^−–]|\\times|\\cdot|\\div)\s*\d)(?!\s*\}\s*\{)")  # nor \binom{8}{4}
    if (boxed := last_boxed(final)) is not None:
        m = re.fullmatch(r"(-?\d+)(?:\.0+)?", _bare_box(boxed))
        # anything else in the box as written: lm-eval's normalisation drops units only while they read \text{ ...}
        return m.group(1) if m else boxed
    for cand in reversed(_statements(final)):
        cand = _unwrap(cand).replace(",", "")
        # "$21 + 49 = 70$": an expression's value, after its last =
        if (m := re.match(integer, cand) or re.match(integer, cand.rsplit("=", 1)[-1])) is not None:
            return m.group(1)
    # a closing line that is the number alone: "**70**", "$70$", "$$70$$", "\\(70\\)" (never "7 +", a line cut short)
    if (last := _last_line(final)) and (m := re.fullmatch(r"[\s*$_(\[{\\]*(-?\d+)[\s.*$_)\]}\\!]*", last)) is not None:
        return m.group(1)
    return None


def _bare_box(boxed: str) -> str:
    """A box's content without markup that cannot change its value: spacing commands (``\\,``, ``\\!``),
    ``\\displaystyle``, font commands, thousands separators, and braces or parentheses around it all."""
    text = re.sub(r"\\(?:[,;:! ]|displaystyle\b|quad\b)", "", _unwrap(boxed)).replace(",", "").strip()
    while (m := re.fullmatch(r"\{(.*)\}|\((.*)\)", text)) is not None:
        text = _unwrap(m.group(1) if m.group(1) is not None else m.group(2))
    return text


def _one_value(answer: str) -> bool:
    """A box that states one value: not a hedge, two numbers joined by or/and (``70 \\text{ or } 64``,
    ``70 \\text{ and } 49``), which lm-eval's normalisation would read as its first, everything after a
    ``\\text{ `` being a unit to it (``70 \\text{ red and blue marbles}`` is one value)."""
    return not re.search(r"\d[^\d]*\b(?:or|and)\b[^\d]*\d", answer, flags=re.IGNORECASE)


def _same_integer(answer: str, target: str) -> bool:
    """Both plain integers (digits, an optional sign: never Python's ``7_0``), and equal."""
    if not all(re.fullmatch(r"\s*-?\d+\s*", x) for x in (answer, target)):
        return False
    return int(answer) == int(target)


def _math_equiv(answer: str, target: str) -> bool:
    """lm-eval's ``hendrycks_math`` string normalisation (as its ``aime`` task scores)."""
    try:
        from lm_eval.tasks.aime.utils import is_equiv
    except ImportError:  # lm-eval is optional: plain comparison
        return answer.strip() == target.strip()
    return bool(is_equiv(answer, target))


def score(text: str, target: str, answer_type: str, n_choices: int = 4) -> Verdict:
    """Extract the answer of ``answer_type`` from ``text`` and compare it with ``target``.

    ``target`` is the gold answer as the task's ``doc_to_target`` gives it: "True"/"False" (or
    "yes"/"no") for ``boolean``, a letter (optionally in parentheses) for ``choice``, a number for
    ``integer``.
    """
    if answer_type == "boolean":
        got = extract_boolean(text)
        gold = _BOOL_WORDS[_unwrap(str(target)).lower()]
        return Verdict(got is not None and got == gold, None if got is None else str(got))
    if answer_type == "choice":
        got = extract_choice(text, n_choices)
        gold = _unwrap(str(target)).strip("()")
        return Verdict(got is not None and got == gold, got)
    if answer_type == "integer":
        got = extract_integer(text)
        if got is None:
            return Verdict(False, None)
        gold = str(target).strip()
        return Verdict(_same_integer(got, gold) or (_one_value(got) and _math_equiv(got, gold)), got)
    raise ValueError(f"unknown answer type {answer_type!r}: choose one of {ANSWER_TYPES}")
