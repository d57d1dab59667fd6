"""The offline demo's toy reasoning task and its tiny Qwen3 models, trained here on CPU.

The task (``tasks/odiag_toy.yaml``): the running sum mod 10 of a digit string, written one step
per line, the answer checked exactly::

    user:       sum 48291
    assistant:  4+8=2
                2+2=4
                4+9=3
                3+1=4
                answer: 4

Every step matters: one wrong line makes the answer wrong, so the student's token choices at each
step are decision points with very different success probabilities ``Q``. Difficulty is the
number of digits.

The models are Qwen3 checkpoints (``transformers`` format, safetensors) over a character-level
tokenizer with Qwen's chat template (``enable_thinking`` included), trained from scratch,
deterministically (fixed seeds, steps and thread count):

- **student** (hidden 64, 2 layers): trained on deliberately sloppy solutions, where a step whose
  sum wraps past 10 is off by one with probability ``SLIP`` (0.2), so its accuracy falls with the
  number of digits (about half right at 7); a share of its training prompts carry hints in exactly
  the form of the toy self-teachers' contexts (``teachers/toy-self-*.yaml``: a correct solution, its
  summary, a correct and a wrong one, both summaries) with the clean solution as the target, so that
  the student reading a solution is a much better teacher than the student alone;
- **teacher** (hidden 96, 3 layers): trained on clean solutions only, above 90% accurate.

Both are trained with narrow heads (16 and 24 dimensions) and stored with heads zero-padded to
:data:`SERVED_HEAD_DIM` (32), the smallest head size vLLM's CPU attention runs (:func:`pad_heads`:
an exact rewrite, the same function up to rounding, so every number the demo reports is kept).

The summariser of the ``toy-self-sum-*`` teachers is :func:`summarize` (the running totals), a text
function registered as ``toy-summary`` in :data:`harness.teachers.TEXT_SUMMARIZERS`.

``python -m harness.toy`` retrains both into ``harness/toy_models/``, pads their heads and writes
``MANIFEST.json`` (sizes, accuracies, training time); the committed checkpoints were made by exactly
that command. ``python -m harness.toy --pad-only`` pads checkpoints trained before padding existed
in place (what the committed ones went through: ``MANIFEST.json`` names the trained weights' hash).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import inspect
import json
import logging
import re
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

TOY_DIR = Path(__file__).resolve().parent / "toy_models"
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>")
CHARACTERS = "\n 0123456789abcdefghijklmnopqrstuvwxyz+=:.,?()-"
# Qwen3's template, one message kind: a user turn, then the assistant prompt (empty think block
# when enable_thinking is false), so the toy student reads prompts exactly as Qwen3 students do.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)
SLIP = 0.2  # chance that the student's training solution is off by one at a step that wraps past 10
SPACED = 0.5  # chance that a training line is written "a + d = s" rather than "a+d=s" (style only)
HINT_SHARE = 0.4  # share of the student's training prompts that carry a hint (a toy self-teacher context)
HINT_TEACHERS = ("toy-self-1c", "toy-self-sum-1c", "toy-self-1c1w", "toy-self-sum-1c1w")
TRAIN_DIGITS = (2, 10)  # digits per training question, uniform over this inclusive range
# Tiny models run on one torch thread: reproducible, and on a busy 2-core machine two OpenMP
# threads spin-wait for each other (measured 60x slower sampling than one).
THREADS = 1
SERVED_HEAD_DIM = 32  # vLLM's CPU attention runs head sizes 32, 64, 80, 96, 112, 128, ... only


@dataclasses.dataclass(frozen=True)
class ToyModel:
    """One toy model: its architecture and its training recipe."""

    name: str  # directory under toy_models/
    hidden_size: int  # width
    num_hidden_layers: int  # depth
    intermediate_size: int  # MLP width
    head_dim: int  # hidden_size / 4 heads, while training (stored padded to SERVED_HEAD_DIM)
    sloppy: bool  # trained on sloppy solutions (and hints) rather than clean ones
    steps: int  # optimizer steps
    seed: int  # initialisation and data seed
    learning_rate: float = 5e-4  # AdamW (1e-3 stalls)
    batch_size: int = 32  # sequences per step


MODELS = {
    "student": ToyModel("student", 64, 2, 256, 16, sloppy=True, steps=5000, seed=1),
    "teacher": ToyModel("teacher", 96, 3, 384, 24, sloppy=False, steps=2000, seed=2),
}


# the task's text ---------------------------------------------------------------------------------


def question_text(digits: str) -> str:
    """The student's user message (``doc_to_text`` of ``tasks/odiag_toy.yaml``)."""
    return f"sum {digits}"


def running_sums(digits: str) -> list[int]:
    """The exact running sums mod 10 after each digit."""
    return list(np.cumsum([int(d) for d in digits]) % 10)


def solution_text(digits: str, written: Sequence[int] | None = None, spaced: Sequence[bool] | None = None) -> str:
    """The worked solution, one ``a+d=s`` line per digit after the first, then ``answer: s``.

    ``written`` are the sums the solver writes after each digit (by default the exact ones); each
    line adds the next digit to the previous *written* sum, so one slip carries to the answer.
    ``spaced`` marks lines written ``a + d = s``: a choice of style that never changes the answer.
    """
    written = running_sums(digits) if written is None else list(written)
    spaced = [False] * len(digits) if spaced is None else list(spaced)
    lines = [
        (f"{written[i - 1]} + {digits[i]} = {written[i]}" if spaced[i - 1] else f"{written[i - 1]}+{digits[i]}={written[i]}")
        for i in range(1, len(digits))
    ]
    return "\n".join([*lines, f"answer: {written[-1]}"])


def styles(digits: str, rng: np.random.Generator) -> list[bool]:
    """Each line's style, drawn independently: correct solutions differ in form, as real rollouts do,
    so a self-teacher can be shown a correct solution that is not the scored path."""
    return list(rng.random(max(len(digits) - 1, 0)) < SPACED)


def sloppy_sums(digits: str, rng: np.random.Generator, slip: float = SLIP) -> list[int]:
    """Sums as the sloppy solver writes them: off by one with chance ``slip`` when a step wraps past 10."""
    out = [int(digits[0])]
    for d in digits[1:]:
        total = out[-1] + int(d)
        s = total % 10
        if total >= 10 and rng.random() < slip:
            s = (s + rng.choice((-1, 1))) % 10
        out.append(int(s))
    return out


def wrong_sums(digits: str, rng: np.random.Generator) -> list[int]:
    """Sums with exactly one off-by-one step (a wrong answer), the rest computed from it correctly."""
    k = int(rng.integers(1, len(digits)))
    out = [int(digits[0])]
    for i, d in enumerate(digits[1:], start=1):
        s = (out[-1] + int(d)) % 10
        out.append(int((s + rng.choice((-1, 1))) % 10) if i == k else int(s))
    return out


def summarize(solution: str) -> str:
    """The ``toy-summary`` summariser: the running totals of a toy solution ("2434" for the example above)."""
    return "".join(re.findall(r"=\s*(\d)", solution))


def toy_docs(digits: int = 7, questions: int = 64, seed: int = 2025) -> list[dict]:
    """The task's questions: ``questions`` digit strings of length ``digits`` drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(questions):
        s = "".join(str(d) for d in rng.integers(0, 10, digits))
        out.append({"digits": s, "answer": str(running_sums(s)[-1])})
    return out


# tokenizer and models ----------------------------------------------------------------------------


def build_tokenizer():
    """The character-level tokenizer (a ``transformers`` fast tokenizer, so AutoTokenizer loads it)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate([*SPECIAL_TOKENS, *CHARACTERS])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    out = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", model_max_length=512
    )
    out.chat_template = CHAT_TEMPLATE
    return out


def model_config(spec: ToyModel, tokenizer):
    """The Qwen3 architecture of a toy model."""
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers, num_attention_heads=4, num_key_value_heads=2,
        head_dim=spec.head_dim, max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )


def chat_prompt(tokenizer, user_text: str) -> list[int]:
    """The student's prompt ids, as the task renders them (enable_thinking false)."""
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": user_text}], tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def hint_teachers():
    """The toy self-teachers whose contexts the student is trained to read."""
    from harness.teachers import load_teacher

    return [load_teacher(name) for name in HINT_TEACHERS]


def hint_text(teacher, digits: str, rng: np.random.Generator) -> str:
    """A toy self-teacher's context for ``digits``: the clean solution as the correct one."""
    from harness.teachers import context_text

    right = solution_text(digits, spaced=styles(digits, rng))
    wrong = solution_text(digits, wrong_sums(digits, rng), styles(digits, rng))
    return context_text(teacher, question_text(digits), [right], [wrong], [summarize(right)], [summarize(wrong)])


def training_example(spec: ToyModel, rng: np.random.Generator, hints: Sequence) -> tuple[str, str]:
    """(user message, response) of one training sequence."""
    n = int(rng.integers(TRAIN_DIGITS[0], TRAIN_DIGITS[1] + 1))
    digits = "".join(str(d) for d in rng.integers(0, 10, n))
    if not spec.sloppy:
        return question_text(digits), solution_text(digits, spaced=styles(digits, rng))
    if hints and rng.random() < HINT_SHARE:
        # the hint's style and the target's are drawn apart: the student copies sums, not style
        return hint_text(hints[int(rng.integers(len(hints)))], digits, rng), solution_text(digits, spaced=styles(digits, rng))
    return question_text(digits), solution_text(digits, sloppy_sums(digits, rng), styles(digits, rng))


def _batch(spec, tokenizer, rng, hints):
    """Right-padded ids and labels (-100 except on response tokens and the closing stop id)."""
    import torch

    seqs, starts = [], []
    for _ in range(spec.batch_size):
        user, response = training_example(spec, rng, hints)
        prompt = chat_prompt(tokenizer, user)
        seqs.append(prompt + tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])
        starts.append(len(prompt))
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(seqs), width), -100, dtype=torch.long)
    for i, (seq, start) in enumerate(zip(seqs, starts, strict=True)):
        ids[i, : len(seq)] = torch.tensor(seq)
        labels[i, start : len(seq)] = torch.tensor(seq[start:])
    return ids, labels


@contextlib.contextmanager
def _threads(n: int = THREADS):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train(spec: ToyModel, tokenizer, out_dir: Path) -> dict:
    """Train one toy model from scratch and save it (with the tokenizer) to ``out_dir``."""
    import torch
    import torch.nn.functional as F
    from transformers import Qwen3ForCausalLM

    with _threads():
        torch.manual_seed(spec.seed)
        rng = np.random.default_rng(spec.seed)
        model = Qwen3ForCausalLM(model_config(spec, tokenizer))
        hints = hint_teachers() if spec.sloppy else []
        opt = torch.optim.AdamW(model.parameters(), lr=spec.learning_rate, betas=(0.9, 0.98), weight_decay=0.0)
        warmup = 100
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min(1.0, (s + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * s / spec.steps)))
        )
        t0 = time.monotonic()
        model.train()
        for step in range(spec.steps):
            ids, labels = _batch(spec, tokenizer, rng, hints)
            logits = model(input_ids=ids, use_cache=False).logits[:, :-1]
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            if step % 250 == 0 or step == spec.steps - 1:
                log.info("%s step %d/%d loss %.4f (%.0fs)", spec.name, step, spec.steps, loss.item(), time.monotonic() - t0)
        seconds = time.monotonic() - t0
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return {"parameters": sum(p.numel() for p in model.parameters()), "train_seconds": round(seconds, 1),
            "final_loss": round(float(loss.item()), 4), **dataclasses.asdict(spec)}


# head padding --------------------------------------------------------------------------------------


def _head_rows(heads: int, old: int, new: int):
    """Where each of ``heads`` heads' ``old`` dimensions go among ``new``: each rotary half (RoPE
    pairs dimension ``i`` with ``i + dim/2``) keeps its place at the start of the padded half."""
    import torch

    half = torch.arange(old // 2)
    one = torch.cat([half, half + new // 2])
    return torch.cat([h * new + one for h in range(heads)])


def pad_heads(model, head_dim: int = SERVED_HEAD_DIM):
    """A Qwen3 model whose attention heads are zero-padded from ``d`` to ``head_dim`` dimensions,
    computing the same function (up to float rounding).

    Per head, each rotary half of the query, key and value projections gets zero rows appended,
    and the output projection zero columns, so the padded dimensions carry zeros everywhere. Three
    things see the head size and are compensated: the rotary frequencies (``base^(-2i/dim)``: the
    base becomes ``base^(head_dim/d)``, so the first ``d/2`` frequencies are the trained ones);
    q_norm/k_norm, an RMSNorm over the head, whose mean of squares would shrink by ``d/head_dim``
    (the query and key projections are scaled by ``c = sqrt(head_dim/d)``, which restores it
    exactly, epsilon included, and scales the norm's output by ``c``); and the attention scale
    ``head_dim^-1/2``, which the query's factor ``c`` cancels (the query norm's weight is kept, the
    key norm's is divided by ``c``).
    """
    import copy

    import torch
    from transformers import Qwen3ForCausalLM

    config = copy.deepcopy(model.config)
    old = config.head_dim
    if old == head_dim:
        return model
    if old > head_dim or old % 2 or getattr(config, "attention_bias", False):
        raise ValueError(f"cannot pad heads of {old} dimensions (attention bias: {config.attention_bias}) to {head_dim}")
    rope = dict(getattr(config, "rope_parameters", None) or {"rope_type": "default", "rope_theta": config.rope_theta})
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"padding supports the default rotary embedding, not {rope['rope_type']!r}")
    rope["rope_theta"] = float(rope["rope_theta"]) ** (head_dim / old)
    config.rope_parameters = rope
    config.head_dim = head_dim
    padded = Qwen3ForCausalLM(config).eval()
    state = model.state_dict()
    q_rows = _head_rows(config.num_attention_heads, old, head_dim)
    kv_rows = _head_rows(config.num_key_value_heads, old, head_dim)
    norm_rows = _head_rows(1, old, head_dim)
    scale = (head_dim / old) ** 0.5
    new = {}
    for name, value in padded.state_dict().items():
        value = torch.zeros_like(value)
        src = state[name].detach()
        if name.endswith("q_proj.weight"):
            value[q_rows] = src * scale
        elif name.endswith("k_proj.weight"):
            value[kv_rows] = src * scale
        elif name.endswith("v_proj.weight"):
            value[kv_rows] = src
        elif name.endswith("o_proj.weight"):
            value[:, q_rows] = src
        elif name.endswith("q_norm.weight"):
            value[norm_rows] = src
        elif name.endswith("k_norm.weight"):
            value[norm_rows] = src / scale
        else:
            value = src.clone()
        new[name] = value
    padded.load_state_dict(new)
    return padded


def pad_checkpoint(path: Path, head_dim: int = SERVED_HEAD_DIM) -> dict:
    """Pad the heads of the checkpoint at ``path`` in place; what changed, for the manifest."""
    model, _ = load(path)
    old = model.config.head_dim
    trained_sha = _sha256(path / "model.safetensors")
    if old == head_dim:
        return {}
    padded = pad_heads(model, head_dim)
    padded.save_pretrained(path, safe_serialization=True)  # the tokenizer files stay as they are
    return {"head_dim": head_dim, "trained_head_dim": old, "trained_sha256": trained_sha,
            "trained_parameters": sum(p.numel() for p in model.parameters()),
            "parameters": sum(p.numel() for p in padded.parameters()),
            "rope_theta": padded.config.rope_parameters["rope_theta"]}


# sampling and accuracy ---------------------------------------------------------------------------


def sample(model, prompts: np.ndarray, max_new_tokens: int, stop_id: int, seed: int, temperature: float = 1.0):
    """One completion of each row of ``prompts`` (int [B, L], equal lengths) from the full softmax
    at ``temperature`` (no top-k/top-p).

    A small KV-cached sampler for checking the checkpoints; the diagnostic samples through its backend.
    Returns (B response id arrays, each ending with ``stop_id`` when it stopped; truncated bool [B]).
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    # transformers 5 renamed past_key_values to cache
    cache_name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    with torch.inference_mode():
        out = model(input_ids=torch.as_tensor(prompts, dtype=torch.long), use_cache=True)
        past, logits = out[cache_name], out.logits[:, -1]
        n = len(prompts)
        tokens = torch.full((n, max_new_tokens), stop_id, dtype=torch.long)
        done = torch.zeros(n, dtype=torch.bool)
        length = torch.full((n,), max_new_tokens)
        for t in range(max_new_tokens):
            nxt = torch.multinomial(torch.softmax(logits.float() / temperature, dim=-1), 1, generator=gen)[:, 0]
            nxt = torch.where(done, torch.full_like(nxt, stop_id), nxt)
            tokens[:, t] = nxt
            stopped = (nxt == stop_id) & ~done
            length[stopped] = t + 1
            done |= stopped
            if bool(done.all()):
                break
            out = model(input_ids=nxt[:, None], use_cache=True, **{cache_name: past})
            past, logits = out[cache_name], out.logits[:, -1]
    return [tokens[i, : int(length[i])].numpy() for i in range(n)], ~done.numpy()


def accuracy(model, tokenizer, digits: int, questions: int = 200, seed: int = 0, hint: str | None = None) -> float:
    """Share of correct sampled answers (one sample each) on ``questions`` fresh questions of ``digits`` digits.

    ``hint`` names a toy self-teacher whose context (with the clean solution) replaces the prompt.
    A fixed seed gives a fixed number: the tests pin the committed checkpoints with it.
    """
    from harness.tasks.scoring import score
    from harness.teachers import load_teacher

    rng = np.random.default_rng(seed)
    teacher = load_teacher(hint) if hint else None
    strings = ["".join(str(d) for d in rng.integers(0, 10, digits)) for _ in range(questions)]
    users = [hint_text(teacher, s, rng) if teacher else question_text(s) for s in strings]
    prompts = [chat_prompt(tokenizer, u) for u in users]
    responses, truncated = [None] * questions, np.zeros(questions, bool)
    with _threads():
        for length in sorted({len(p) for p in prompts}):  # hints vary in style, hence in length
            rows = [i for i, p in enumerate(prompts) if len(p) == length]
            got, cut = sample(model, np.array([prompts[i] for i in rows]), 12 * digits + 16, tokenizer.eos_token_id, seed + length)
            for i, ids, c in zip(rows, got, cut, strict=True):
                responses[i], truncated[i] = ids, c
    right = 0
    for s, ids, cut in zip(strings, responses, truncated, strict=True):
        text = tokenizer.decode(ids.tolist(), skip_special_tokens=True)
        right += (not cut) and score(text, str(running_sums(s)[-1]), "integer").correct
    return right / questions


def load(name_or_path: str | Path = "student"):
    """(model, tokenizer) of a toy checkpoint: ``student``/``teacher`` (committed) or a directory."""
    from transformers import AutoTokenizer, Qwen3ForCausalLM

    path = Path(name_or_path) if Path(name_or_path).is_dir() else TOY_DIR / str(name_or_path)
    return Qwen3ForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


# the demo ------------------------------------------------------------------------------------------

DEMO_TEACHERS = ("toy-self-1c", "toy-self-sum-1c", "toy-self-1c1w", "toy-self-sum-1c1w", "toy-self-1c-teacher", "toy-teacher")


def demo_config(overrides: Sequence[str] = ()):
    """The run behind ``odiag demo``: every toy teacher on the toy task with the committed student,
    offline; ``overrides`` are ``key=value`` items exactly as ``odiag run --set`` takes them."""
    from harness.config import resolve_run_config

    base = {"task": "odiag_toy", "backend": "hf", "student": str(TOY_DIR / "student"), "dtype": "float32",
            "teachers": list(DEMO_TEACHERS), "limit": 8}
    return resolve_run_config(None, [f"{k}={json.dumps(v)}" for k, v in base.items()] + list(overrides))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: Sequence[str] | None = None) -> int:
    """Retrain the toy models into ``--out`` (default harness/toy_models) and write MANIFEST.json."""
    parser = argparse.ArgumentParser(prog="python -m harness.toy", description=main.__doc__)
    parser.add_argument("--out", default=str(TOY_DIR), help="directory for student/, teacher/ and MANIFEST.json")
    parser.add_argument("--only", choices=sorted(MODELS), help="train one model only")
    parser.add_argument("--pad-only", action="store_true",
                        help="pad the heads of the checkpoints already in --out (no training), remeasure")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out = Path(args.out)
    tokenizer = build_tokenizer()
    manifest_path = out / "MANIFEST.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.exists() else {}
    manifest["command"] = "python -m harness.toy"
    for name, spec in MODELS.items():
        if args.only and name != args.only:
            continue
        if args.pad_only:
            info = {**manifest.get(name, {}), **pad_checkpoint(out / name)}
        else:
            info = train(spec, tokenizer, out / name)
            info.update(pad_checkpoint(out / name))
        model, tok = load(out / name)
        info["accuracy"] = {str(d): accuracy(model, tok, d, questions=500, seed=123) for d in (4, 6, 7, 8, 10)}
        if spec.sloppy:
            info["accuracy_with_hint"] = {h: accuracy(model, tok, 7, questions=500, seed=123, hint=h) for h in HINT_TEACHERS}
        weights = out / name / "model.safetensors"
        info["bytes"] = weights.stat().st_size
        info["sha256"] = _sha256(weights)
        manifest[name] = info
        log.info("%s: %s", name, json.dumps(info))
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
