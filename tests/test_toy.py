"""The offline demo's toy task and its committed tiny Qwen3 checkpoints (tier 2, CPU, seconds).

Training does not run here (the checkpoints are committed; ``python -m harness.toy`` remakes
them): the tests pin what the demo relies on. The student is a middling solver (40-70% at the
demo's 7 digits), the external toy teacher a good one (above 90%), and the student reading any toy
self-teacher's context solves almost every question, so every self-distillation configuration has a
working toy counterpart. Accuracies are measured on a fixed seed.
"""

import hashlib
import json

import numpy as np
import pytest

from harness import toy

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

DEMO_DIGITS = 7


@pytest.fixture(scope="module")
def student():
    if not (toy.TOY_DIR / "student" / "model.safetensors").exists():
        pytest.fail(f"toy checkpoints missing under {toy.TOY_DIR}: run python -m harness.toy")
    return toy.load("student")


@pytest.fixture(scope="module")
def teacher():
    return toy.load("teacher")


def test_worked_solutions_and_summaries():
    assert toy.solution_text("48291") == "4+8=2\n2+2=4\n4+9=3\n3+1=4\nanswer: 4"
    assert toy.summarize(toy.solution_text("48291")) == "2434"
    rng = np.random.default_rng(0)
    for _ in range(200):
        digits = "".join(str(d) for d in rng.integers(0, 10, 8))
        sloppy = toy.sloppy_sums(digits, rng)
        exact_steps = [(a + int(d)) % 10 for a, d in zip(sloppy[:-1], digits[1:], strict=True)]
        for a, d, s, e in zip(sloppy[:-1], digits[1:], sloppy[1:], exact_steps, strict=True):
            assert s == e or (a + int(d) >= 10 and (s - e) % 10 in (1, 9))  # slips only where the sum wraps
        wrong = toy.wrong_sums(digits, rng)
        assert wrong[-1] != toy.running_sums(digits)[-1]


def test_checkpoints_are_committed_small_and_match_the_manifest():
    manifest = json.loads((toy.TOY_DIR / "MANIFEST.json").read_text())
    total = sum(p.stat().st_size for p in toy.TOY_DIR.rglob("*") if p.is_file())
    assert total < 5 * 2**20
    for name in ("student", "teacher"):
        weights = (toy.TOY_DIR / name / "model.safetensors").read_bytes()
        assert hashlib.sha256(weights).hexdigest() == manifest[name]["sha256"]
    assert manifest["student"]["parameters"] < manifest["teacher"]["parameters"] < 500_000


def test_tokenizer_and_chat_template_are_qwen3s(student, teacher):
    (_, tok), (_, tok_t) = student, teacher
    assert tok.get_vocab() == tok_t.get_vocab() and len(tok) == 52
    messages = [{"role": "user", "content": "sum 123"}]
    for thinking in (False, True):
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=thinking)
        assert text == "<|im_start|>user\nsum 123<|im_end|>\n<|im_start|>assistant\n" + ("" if thinking else "<think>\n\n</think>\n\n")
    assert tok.decode(tok("1+2=3\nanswer: 3")["input_ids"]) == "1+2=3\nanswer: 3"


def test_the_toy_yaml_asks_the_questions_the_models_learned(student):
    pytest.importorskip("lm_eval")
    from harness.tasks import load_task

    task = load_task("odiag_toy", tokenizer=str(toy.TOY_DIR / "student"))
    questions = task.questions(5)
    assert [q.doc["record"]["digits"] for q in questions] == [d["digits"] for d in toy.toy_docs()[:5]]
    for q in questions:
        digits = q.doc["record"]["digits"]
        assert len(digits) == DEMO_DIGITS and q.doc["prompt"] == toy.question_text(digits)
        assert q.prompt_ids.tolist() == toy.chat_prompt(student[1], toy.question_text(digits))
        good = toy.solution_text(digits)
        ids = [np.array(student[1](good)["input_ids"] + [student[1].eos_token_id])]
        assert task.rewards(q, ids, np.zeros(1, bool)).tolist() == [1]


def test_demo_models_reach_their_target_accuracies(student, teacher):
    """Pinned on seed 7 (the committed checkpoints; MANIFEST.json has the 500-question numbers)."""
    plain = toy.accuracy(*student, DEMO_DIGITS, questions=300, seed=7)
    assert 0.40 <= plain <= 0.70
    assert toy.accuracy(*teacher, DEMO_DIGITS, questions=300, seed=7) >= 0.90
    for hint in toy.HINT_TEACHERS:
        assert toy.accuracy(*student, DEMO_DIGITS, questions=150, seed=7, hint=hint) >= 0.85, hint


def test_training_is_deterministic(tmp_path):
    import dataclasses

    spec = dataclasses.replace(toy.MODELS["student"], steps=3, batch_size=4)
    tokenizer = toy.build_tokenizer()
    for run in ("a", "b"):
        toy.train(spec, tokenizer, tmp_path / run)
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


VLLM_CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


def test_committed_heads_run_on_vllms_cpu_attention():
    manifest = json.loads((toy.TOY_DIR / "MANIFEST.json").read_text())
    for name in ("student", "teacher"):
        config = json.loads((toy.TOY_DIR / name / "config.json").read_text())
        assert config["head_dim"] in VLLM_CPU_HEAD_SIZES
        assert manifest[name]["head_dim"] == config["head_dim"] == toy.SERVED_HEAD_DIM
        assert manifest[name]["trained_head_dim"] < config["head_dim"]


@pytest.mark.parametrize("head_dim", [16, 24])
def test_padding_heads_keeps_the_function(head_dim):
    """A random Qwen3 (norm weights and activations far from 1, so a missed compensation shows) and
    its padded copy give the same log-probabilities; the padding is zeros."""
    config = transformers.Qwen3Config(vocab_size=40, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, head_dim=head_dim,
                                      max_position_embeddings=128, initializer_range=0.02)
    torch.manual_seed(0)
    model = transformers.Qwen3ForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.3, 2.0)
    padded = toy.pad_heads(model, 32)
    assert padded.config.head_dim == 32
    ids = torch.randint(0, 40, (2, 60), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = torch.log_softmax(model(ids).logits.double(), -1)
        b = torch.log_softmax(padded(ids).logits.double(), -1)
    assert float((a - b).abs().max()) < 1e-4
    q = padded.model.layers[0].self_attn.q_proj.weight.detach().reshape(4, 32, 48)
    half = head_dim // 2
    assert float(q[:, half:16].abs().max()) == 0.0 and float(q[:, 16 + half:].abs().max()) == 0.0
    unpadded = toy.pad_heads(model, head_dim)
    assert unpadded is model
