"""The vLLM backend.

Always on (no vLLM needed): the pure parts (the untruncated sampling parameters, the conversion of
vLLM-shaped outputs, the temperature correction of raw prompt log-probabilities) and the class's
wiring, against small fakes shaped like vLLM's ``LLM``, ``RequestOutput``, ``CompletionOutput`` and
``Logprob``. Behind the ``vllm`` marker (a GPU with an importable vLLM): the real engine on a tiny
random Qwen3, against the exact distributions of the hf backend.
"""

import dataclasses
import subprocess
import sys
import types

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
from harness.core import all_divergences


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


# -- the real engine (GPU, vLLM importable) -----------------------------------------------------------------

VOCAB = 256


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    pytest.importorskip("vllm")
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    if not torch.cuda.is_available():
        pytest.skip("vLLM needs a GPU")
    path = tmp_path_factory.mktemp("tiny-qwen3")
    config = transformers.Qwen3Config(vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=1, head_dim=64,
                                      max_position_embeddings=1024, initializer_range=0.3, tie_word_embeddings=False)
    torch.manual_seed(0)
    transformers.Qwen3ForCausalLM(config).save_pretrained(path)
    specs = {STUDENT: ModelSpec(str(path), dtype="bfloat16")}
    engine_options = {"skip_tokenizer_init": True, "enforce_eager": True, "max_model_len": 512}
    backend = VLLMBackend(specs, score_with="vllm", score_logprobs=VOCAB, gpu_memory_utilization=0.25,
                          engine_options=engine_options)
    from harness.backends.hf import HFBackend

    return backend, HFBackend(specs, device="cuda")


@pytest.mark.vllm
def test_real_vllm_samples_are_distributed_as_pi(real):
    from scipy import stats

    backend, exact = real
    prefix, temperature, n = np.array([5, 17, 42, 8, 33]), 1.5, 4000
    (res,) = backend.sample([SampleRequest(prefix, n, seed=3, max_new_tokens=1, temperature=temperature)])
    # position 0 of a response after the whole prefix: the distribution of the first sampled token
    (score,) = exact.score([ScoreRequest(prefix, np.array([0]), STUDENT, temperature, VOCAB)])
    ids, logp, _ = score.at(0)
    probs = np.zeros(VOCAB)
    probs[ids] = np.exp(logp)
    counts = np.bincount(np.concatenate(res.tokens), minlength=VOCAB)
    expected = probs * n
    big = expected >= 5
    observed = np.append(counts[big], counts[~big].sum())
    expected = np.append(expected[big], expected[~big].sum())
    assert stats.chisquare(observed, expected * observed.sum() / expected.sum()).pvalue > 1e-3


@pytest.mark.vllm
def test_real_vllm_seeds_stops_and_truncation(real):
    backend, _ = real
    requests = [SampleRequest(np.array([3, 9, 27]), 8, 11, 12, 1.0, stop_ids=tuple(range(0, VOCAB, 3))),
                SampleRequest(np.array([60, 61]), 5, 12, 7, 0.8)]
    first, again = backend.sample(requests), backend.sample(requests)
    for a, b in zip(first, again, strict=True):
        assert all(np.array_equal(x, y) for x, y in zip(a.tokens, b.tokens, strict=True))
    stop = set(requests[0].stop_ids)
    for t, truncated in zip(first[0].tokens, first[0].truncated, strict=True):
        assert not any(x in stop for x in t[:-1])
        assert truncated == (t[-1] not in stop) and (not truncated or len(t) == 12)
    assert all(len(t) == 7 for t in first[1].tokens) and first[1].truncated.all()


@pytest.mark.vllm
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_real_vllm_scores_match_hf(real, temperature):
    """With every id listed, vLLM's prompt log-probabilities (tempered here) equal the exact ones up to
    bfloat16 kernel differences."""
    backend, exact = real
    rng = np.random.default_rng(0)
    req = ScoreRequest(rng.integers(0, VOCAB, 6), rng.integers(0, VOCAB, 20), STUDENT, temperature, 8, STUDENT,
                       rng.integers(0, VOCAB, 3))
    (got,), (want,) = backend.score([req]), exact.score([req])
    assert got.approximate and not want.approximate
    for k in range(len(req.response)):
        ids_g, lp_g, _ = got.at(k)
        ids_w, lp_w, _ = want.at(k)
        common, ig, iw = np.intersect1d(ids_g, ids_w, return_indices=True)
        assert len(common) >= len(ids_w) - 2  # near-ties in top-k may swap between kernels
        np.testing.assert_allclose(lp_g[ig], lp_w[iw], atol=0.05)
    np.testing.assert_allclose(got.divergences["tv"], want.divergences["tv"], atol=0.02)
