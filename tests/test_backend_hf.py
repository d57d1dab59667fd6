"""The transformers backend on tiny random Qwen3 models (tier 2, CPU, seconds).

The sampler must draw from exactly π (SPEC §1): its token frequencies are tested against the exact
softmax at T, with a check that the same test rejects top-k 50 and the wrong temperature. Samples
are a function of (seed, completion, step) alone. Scores equal a plain full forward pass.
"""

import weakref

import numpy as np
import pytest
from scipy import stats

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from harness.backends import STUDENT, ModelSpec, SampleRequest, ScoreRequest, load_backend  # noqa: E402
from harness.backends.hf import HFBackend, counter_uniforms, inverse_cdf_sample  # noqa: E402
from harness.core import all_divergences  # noqa: E402

VOCAB = 64


def _tiny(path, seed: int, vocab: int = VOCAB) -> str:
    """A random Qwen3 with peaked next-token distributions (entropy ~3 nats of log 64 = 4.2)."""
    config = transformers.Qwen3Config(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=256, initializer_range=0.3,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    transformers.Qwen3ForCausalLM(config).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {"student": _tiny(root / "student", 0), "teacher": _tiny(root / "teacher", 1)}


@pytest.fixture(scope="module")
def backend(paths):
    return HFBackend({STUDENT: ModelSpec(paths["student"]), "teacher": ModelSpec(paths["teacher"])}, batch_size=64)


@pytest.fixture(scope="module")
def plain(paths):
    """The same checkpoints as plain transformers models, for reference computations."""
    load = transformers.AutoModelForCausalLM.from_pretrained
    return {name: load(path).eval() for name, path in paths.items()}


def _full_logp(model, ids, temperature=1.0) -> np.ndarray:
    """log_softmax(logits / T) of a plain full forward pass: [len(ids), V]."""
    with torch.inference_mode():
        logits = model(torch.as_tensor(np.asarray(ids))[None]).logits[0].float()
    return torch.log_softmax(logits / temperature, dim=-1).double().numpy()


def _chi2_pvalue(counts: np.ndarray, probs: np.ndarray) -> float:
    """Pearson chi-square goodness of fit, cells with expected count < 5 pooled (zero-probability
    cells that were hit give p = 0)."""
    expected = probs * counts.sum()
    if np.any((probs == 0) & (counts > 0)):
        return 0.0
    small = expected < 5
    obs = np.append(counts[~small], counts[small].sum())
    exp = np.append(expected[~small], expected[small].sum())
    keep = exp > 0
    return float(stats.chisquare(obs[keep], exp[keep] * obs[keep].sum() / exp[keep].sum()).pvalue)


def _truncate_top_k(probs: np.ndarray, k: int) -> np.ndarray:
    out = np.where(probs >= np.sort(probs)[-k], probs, 0.0)
    return out / out.sum()


def _counts_of(probs: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Token counts of ``n`` draws from ``probs`` by the backend's own sampler."""
    u = torch.as_tensor(counter_uniforms(np.full(n, seed), np.arange(n), np.zeros(n)))
    with np.errstate(divide="ignore"):  # log 0 = -inf: a truncated token
        logits = torch.as_tensor(np.log(probs)).expand(n, -1)
    return np.bincount(inverse_cdf_sample(logits, torch.ones(n), u).numpy(), minlength=len(probs))


def test_fan_out_samples_are_distributed_as_pi(backend, plain):
    """Tokens 1 and 2 of 4,000 completions fanned out from one prefix match the exact softmax at T.

    Token 2's marginal is sum_a pi(a | prefix) pi(b | prefix + a), from 64 plain forward passes. At
    T = 1.5 the 14 least likely tokens hold 3.5% of the mass, so the same test rejects a sampler
    with top-k 50 (what ``generate`` applies unless told top_k=0) and one at T = 1.
    """
    prefix, temperature, n = np.array([5, 17, 42, 8, 33]), 1.5, 4000
    (res,) = backend.sample([SampleRequest(prefix, n, seed=2024, max_new_tokens=2, temperature=temperature)])
    tokens = np.stack(res.tokens)
    assert tokens.shape == (n, 2) and res.truncated.all()

    p1 = np.exp(_full_logp(plain["student"], prefix, temperature)[-1])
    with torch.inference_mode():
        batch = torch.as_tensor(np.concatenate([np.tile(prefix, (VOCAB, 1)), np.arange(VOCAB)[:, None]], axis=1))
        logits = plain["student"](batch).logits[:, -1].double()
    p2 = p1 @ torch.softmax(logits / temperature, dim=-1).numpy()
    assert _chi2_pvalue(np.bincount(tokens[:, 0], minlength=VOCAB), p1) > 1e-3
    assert _chi2_pvalue(np.bincount(tokens[:, 1], minlength=VOCAB), p2) > 1e-3

    # the test has the power to see the usual mistakes
    assert _chi2_pvalue(_counts_of(_truncate_top_k(p1, 50), n, 1), p1) < 1e-4
    p1_at_1 = np.exp(_full_logp(plain["student"], prefix, 1.0)[-1])
    assert _chi2_pvalue(_counts_of(p1_at_1, n, 2), p1) < 1e-4


def test_inverse_cdf_sampler_is_exact():
    """The sampler alone: 20,000 draws from fixed logits, against their softmax at T = 1.3."""
    logits = torch.tensor([[2.0, 0.5, -1.0, 0.0, -30.0, 1.2]]).expand(20000, -1)
    u = torch.as_tensor(counter_uniforms(np.full(20000, 7), np.arange(20000), np.zeros(20000)))
    ids = inverse_cdf_sample(logits, torch.full((20000,), 1.3), u).numpy()
    probs = torch.softmax(logits[0].double() / 1.3, dim=-1).numpy()
    assert _chi2_pvalue(np.bincount(ids, minlength=6), probs) > 1e-3
    assert inverse_cdf_sample(torch.tensor([[0.0, -np.inf, 0.0]]), torch.ones(1), torch.zeros(1)).item() == 0


def test_logits_that_are_not_finite_are_refused_not_sampled():
    """A NaN or +inf logit (float16 overflow) made the CDF NaN, and the search then returned the last id."""
    from harness.errors import ConfigError

    u = torch.tensor([0.5, 0.5], dtype=torch.float64)
    for bad in (float("nan"), float("inf")):
        logits = torch.tensor([[0.0, bad, 1.0, 2.0], [0.0, 1.0, 2.0, 3.0]])
        with pytest.raises(ConfigError, match="logits are not finite.*bfloat16 or float32"):
            inverse_cdf_sample(logits, torch.ones(2), u)
    masked = torch.tensor([[0.0, float("-inf"), 1.0, 2.0]])  # a masked id: probability 0, never drawn
    assert inverse_cdf_sample(masked, torch.ones(1), torch.tensor([0.0], dtype=torch.float64)).item() == 0


def test_counter_uniforms():
    """Uniform on [0, 1), and a different stream for every seed, completion and step."""
    u = counter_uniforms(np.full(50000, 3), np.arange(50000) % 100, np.arange(50000) // 100)
    assert u.min() >= 0 and u.max() < 1
    assert stats.kstest(u, "uniform").pvalue > 1e-3
    base = counter_uniforms([1], [2], [3])
    for args in (([2], [2], [3]), ([1], [3], [3]), ([1], [2], [4])):
        assert counter_uniforms(*args) != base
    assert counter_uniforms([2**63 - 1], [0], [0])[0] == counter_uniforms(np.array([2**63 - 1], np.uint64), [0], [0])[0]


REQUESTS = [
    SampleRequest(np.array([3, 9, 27, 18]), 9, seed=11, max_new_tokens=12, temperature=1.0, stop_ids=(1, 2, 3)),
    SampleRequest(np.array([60]), 5, seed=12, max_new_tokens=7, temperature=0.8),
    SampleRequest(np.array([5, 6, 7, 8, 9, 10, 11, 12, 13]), 3, seed=13, max_new_tokens=10, temperature=1.2,
                  stop_ids=(4,)),
]


def _same(results_a, results_b) -> bool:
    return all(
        len(a.tokens) == len(b.tokens)
        and all(np.array_equal(x, y) for x, y in zip(a.tokens, b.tokens, strict=True))
        and np.array_equal(a.truncated, b.truncated)
        for a, b in zip(results_a, results_b, strict=True)
    )


def test_samples_do_not_depend_on_batching_order_or_threads(paths):
    """Pins the counter-based randomness: a completion is a function of (seed, index, step) only."""
    spec = {STUDENT: ModelSpec(paths["student"])}
    threads = torch.get_num_threads()
    try:
        reference = HFBackend(spec, batch_size=64, threads=1).sample(REQUESTS)
        for batch_size, threads_now in ((1, 2), (4, 1), (5, 2)):
            backend = HFBackend(spec, batch_size=batch_size, threads=threads_now)
            assert _same(backend.sample(REQUESTS), reference)
            assert _same(backend.sample(REQUESTS[::-1])[::-1], reference)
            assert _same([backend.sample([r])[0] for r in REQUESTS], reference)
    finally:
        torch.set_num_threads(threads)
    # completion i does not depend on how many completions the request asks for
    fewer = HFBackend(spec).sample([SampleRequest(REQUESTS[0].prefix, 4, 11, 12, 1.0, (1, 2, 3))])[0]
    assert all(np.array_equal(a, b) for a, b in zip(fewer.tokens, reference[0].tokens[:4], strict=True))
    # a seed held in a numpy integer (drawn with a Generator) is the number it holds
    held = HFBackend(spec).sample([SampleRequest(REQUESTS[0].prefix, 4, np.int64(11), 12, 1.0, (1, 2, 3))])[0]
    assert all(np.array_equal(a, b) for a, b in zip(held.tokens, fewer.tokens, strict=True))
    # different seeds, different completions
    other = HFBackend(spec).sample([SampleRequest(REQUESTS[1].prefix, 5, 99, 7, 0.8)])[0]
    assert not all(np.array_equal(a, b) for a, b in zip(other.tokens, reference[1].tokens, strict=True))


def test_dropping_and_admitting_rows_frees_the_old_cache_layer_by_layer():
    """A batch that drops finished rows, or admits new ones, copies its cache into a new one; each old
    layer is freed as soon as it is copied, so the two caches are never held whole together (a batch
    of staggered rows would otherwise peak at about 2.5x its cache: bench/kv_memory.py)."""
    from harness.backends.hf import _GrowingLayer, _left_pad, _Running

    g = torch.Generator().manual_seed(0)
    kv = [(torch.randn(4, 2, 6, 3, generator=g), torch.randn(4, 2, 6, 3, generator=g)) for _ in range(3)]
    mask = torch.ones(4, 6, dtype=torch.long)
    mask[:2, :2] = 0  # rows 0 and 1 are left-padded by two
    cache, mask = _left_pad([kv], [mask])  # the batch's cache, as admitting its rows built it
    run = _Running(np.arange(4), np.zeros(4, dtype=int), [[] for _ in range(4)], cache, mask,
                   torch.zeros(4, dtype=torch.long), torch.zeros(4, 5))
    kept = run.select(np.array([0, 1]))
    assert all(layer.keys.shape[0] == 0 and layer._k.numel() == 0 for layer in cache.layers)  # freed
    for layer, (k, v) in zip(kept.cache.layers, kv, strict=True):  # the kept rows, their common padding cut
        assert isinstance(layer, _GrowingLayer) and layer.keys.shape[2] == 4
        assert torch.equal(layer.keys, k[:2, :, 2:]) and torch.equal(layer.values, v[:2, :, 2:])
    assert torch.equal(kept.mask_BL, torch.ones(2, 4, dtype=torch.long))
    new = [(k[2:, :, :3], v[2:, :, :3]) for k, v in kv]
    # while layer i is built, every old layer before it is freed already (no view of it is left anywhere)
    old = [weakref.ref(layer._k) for layer in kept.cache.layers]
    built, stacked = [], _GrowingLayer.stacked

    def watched(keys, values, length):
        built.append(all(ref() is None for ref in old[: len(built)]))
        return stacked(keys, values, length)

    _GrowingLayer.stacked = watched
    try:
        joined, joined_mask = _left_pad([new], [kept.mask_BL, torch.ones(2, 3, dtype=torch.long)], consumed=kept.cache)
    finally:
        _GrowingLayer.stacked = stacked
    assert built == [True] * 3 and all(ref() is None for ref in old)
    for layer, (k, v) in zip(joined.layers, kv, strict=True):
        assert torch.equal(layer.keys[:2], k[:2, :, 2:]) and torch.equal(layer.keys[2:, :, 1:], k[2:, :, :3])
        assert torch.equal(layer.keys[2:, :, :1], torch.zeros(2, 2, 1, 3))  # left padding is zeros
        assert torch.equal(layer.values[2:, :, 1:], v[2:, :, :3])
    assert joined_mask.tolist() == [[1] * 4, [1] * 4, [0, 1, 1, 1], [0, 1, 1, 1]]


def test_stop_ids_and_truncation(backend):
    """A stop id ends a completion and is its last token; only a completion that reaches
    max_new_tokens without one is truncated (a stop id in the last place is not a truncation)."""
    stop = tuple(range(0, VOCAB, 2))  # about half the mass: most completions stop within 5 tokens
    (res,) = backend.sample([SampleRequest(np.array([7, 7, 7]), 400, seed=5, max_new_tokens=5, stop_ids=stop)])
    lengths = np.array([len(t) for t in res.tokens])
    ends_in_stop = np.array([t[-1] in stop for t in res.tokens])
    for t in res.tokens:
        assert 1 <= len(t) <= 5 and not any(x in stop for x in t[:-1])
    np.testing.assert_array_equal(res.truncated, ~ends_in_stop)
    assert np.all(lengths[res.truncated] == 5)
    assert res.truncated.any() and (~res.truncated).any() and np.any(ends_in_stop & (lengths == 5))
    zero, none = backend.sample([SampleRequest(np.array([1]), 3, 0, max_new_tokens=0),
                                 SampleRequest(np.array([1]), 0, 0, max_new_tokens=4)])
    assert [len(t) for t in zero.tokens] == [0, 0, 0] and zero.truncated.all()
    assert none.tokens == [] and none.truncated.shape == (0,)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_scores_match_a_full_forward_pass(backend, plain, temperature):
    """Log-probs on the union id sets equal ``model(ids).logits`` at T; divergences equal
    ``all_divergences`` of the full distributions (reference = student, scored = teacher)."""
    rng = np.random.default_rng(0)
    prompt, teacher_context, response = rng.integers(0, VOCAB, 6), rng.integers(0, VOCAB, 11), rng.integers(0, VOCAB, 9)
    top_k = 5
    own, teacher = backend.score([
        ScoreRequest(prompt, response, STUDENT, temperature, top_k),
        ScoreRequest(teacher_context, response, "teacher", temperature, top_k, STUDENT, prompt),
    ])
    full_s = _full_logp(plain["student"], np.concatenate([prompt, response]), temperature)[len(prompt) - 1 : -1]
    full_t = _full_logp(plain["teacher"], np.concatenate([teacher_context, response]), temperature)
    full_t = full_t[len(teacher_context) - 1 : -1]
    assert own.reference_logprobs is None and own.divergences is None and not teacher.approximate
    for k in range(len(response)):
        top = lambda logp: np.argsort(-logp)[:top_k]  # noqa: E731
        ids, lp, _ = own.at(k)
        np.testing.assert_array_equal(ids, np.union1d(top(full_s[k]), [response[k]]))
        np.testing.assert_allclose(lp, full_s[k, ids], atol=2e-5)
        ids, lp, ref = teacher.at(k)
        np.testing.assert_array_equal(ids, np.union1d(np.union1d(top(full_s[k]), top(full_t[k])), [response[k]]))
        np.testing.assert_allclose(lp, full_t[k, ids], atol=2e-5)
        np.testing.assert_allclose(ref, full_s[k, ids], atol=2e-5)
    # a fill pass: no top-k, each position's extra ids (a short row repeats the response token), exactly
    extra = np.stack([[i, i, response[k]] for k, i in enumerate(np.argmin(full_t, axis=1))])
    (fill,) = backend.score([ScoreRequest(teacher_context, response, "teacher", temperature, 0, extra_ids=extra)])
    for k in range(len(response)):
        ids, lp, _ = fill.at(k)
        np.testing.assert_array_equal(ids, np.union1d(extra[k], [response[k]]))
        np.testing.assert_allclose(lp, full_t[k, ids], atol=2e-5)
    expected = all_divergences(full_s, full_t)
    assert set(teacher.divergences) == set(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(teacher.divergences[name], value, rtol=1e-4, atol=1e-5)


def test_chunked_scoring_equals_unchunked(paths):
    """score_chunk only bounds memory: 3 positions at a time gives the one-chunk result (up to
    float32 rounding, as the head's matrix product sees a different shape)."""
    specs = {STUDENT: ModelSpec(paths["student"]), "teacher": ModelSpec(paths["teacher"])}
    rng = np.random.default_rng(1)
    req = ScoreRequest(rng.integers(0, VOCAB, 4), rng.integers(0, VOCAB, 20), "teacher", 0.9, 4, STUDENT,
                       rng.integers(0, VOCAB, 7))
    (small,) = HFBackend(specs, score_chunk=3).score([req])
    (large,) = HFBackend(specs, score_chunk=10_000).score([req])
    np.testing.assert_array_equal(small.ids, large.ids)
    np.testing.assert_array_equal(small.offsets, large.offsets)
    np.testing.assert_allclose(small.logprobs, large.logprobs, atol=1e-5)
    np.testing.assert_allclose(small.reference_logprobs, large.reference_logprobs, atol=1e-5)
    for name in large.divergences:
        np.testing.assert_allclose(small.divergences[name], large.divergences[name], rtol=1e-5, atol=1e-6)


def test_shared_passes_and_request_order(backend):
    """Requests sharing a reference pass, in any order, give the results they give alone."""
    rng = np.random.default_rng(2)
    prompt, path = rng.integers(0, VOCAB, 5), rng.integers(0, VOCAB, 8)
    requests = [ScoreRequest(prompt, path, STUDENT)] + [
        ScoreRequest(rng.integers(0, VOCAB, 6), path, "teacher", 1.0, 3, STUDENT, prompt) for _ in range(3)
    ]
    together = backend.score(requests)
    for req, res in zip(requests, together, strict=True):
        (alone,) = backend.score([req])
        np.testing.assert_array_equal(res.ids, alone.ids)
        np.testing.assert_allclose(res.logprobs, alone.logprobs, atol=1e-6)


def test_loading_registry_identity_and_errors(paths, tmp_path):
    backend = load_backend("hf", {STUDENT: ModelSpec(paths["student"]), "self": ModelSpec(paths["student"])})
    assert backend._models[STUDENT] is backend._models["self"]  # one checkpoint, loaded once
    info = backend.describe()
    assert info["backend"] == "hf" and info["transformers"] == transformers.__version__
    assert set(info["models"]) == {STUDENT, "self"} and info["models"]["self"]["torch_dtype"] == "float32"
    assert len(info["models"][STUDENT]["config_sha256"]) == 16
    with pytest.raises(KeyError, match="not loaded"):
        backend.sample([SampleRequest(np.array([1]), 1, 0, 1, model="nobody")])
    with pytest.raises(ValueError, match="temperature"):
        backend.sample([SampleRequest(np.array([1]), 1, 0, 1, temperature=0.0)])
    with pytest.raises(ValueError, match="vocabulary"):
        HFBackend({STUDENT: ModelSpec(paths["student"]), "big": ModelSpec(_tiny(tmp_path / "big", 2, vocab=80))})
    # ids outside the vocabulary are refused by name, wherever a request carries them
    bad = np.array([1, VOCAB])
    with pytest.raises(ValueError, match=r"prefix ids must lie in \[0, 64\), got 1 .. 64"):
        backend.sample([SampleRequest(bad, 1, 0, 1)])
    with pytest.raises(ValueError, match="context ids"):
        backend.score([ScoreRequest(bad, np.array([1]))])
    with pytest.raises(ValueError, match="response ids"):
        backend.score([ScoreRequest(np.array([1]), np.array([-1]))])
    # a width-0 extra_ids ([P, 0]: nothing more to score) is no id at all
    assert backend.score([ScoreRequest(np.array([1]), np.array([2, 3]), extra_ids=np.zeros((2, 0), dtype=np.int64))])
    with pytest.raises(ValueError, match="extra_ids ids"):
        backend.score([ScoreRequest(np.array([1]), np.array([2]), extra_ids=np.array([[3, VOCAB]]))])


def test_progress_hook_hears_every_completion_and_token_from_inside_the_call(backend):
    """``on_done`` is called during decoding (several times in one call), and its counts add up to
    the call's completions and generated tokens; passing it changes no sample."""
    requests = [SampleRequest(np.array([3, 4]), 40, seed=1, max_new_tokens=8, stop_ids=(5,)),
                SampleRequest(np.array([9]), 3, seed=2, max_new_tokens=0)]
    heard = []
    with_hook = backend.sample(requests, on_done=lambda n, tokens: heard.append((n, tokens)))
    assert len(heard) > 2
    assert sum(n for n, _ in heard) == 43
    assert sum(t for _, t in heard) == sum(len(t) for res in with_hook for t in res.tokens)
    assert _same(with_hook, backend.sample(requests))
    passes = []
    backend.score([ScoreRequest(np.array([1, 2]), np.array([3, 4, 5]))] * 3, on_done=lambda n, _: passes.append(n))
    assert passes == [1, 1, 1]


def test_the_devices_divergences_are_the_cores_on_every_kind_of_row():
    """On a GPU the exact scorer computes the five divergences on the device in torch (the host's float64 numpy
    took about a thousand times the forward pass's time); they are `all_divergences`, to the order of float64
    sums, zeros and disjoint supports included. Checked on CPU tensors: this machine has no GPU."""
    from harness.backends.hf import DEVICE_DIVERGENCE_ROWS, device_divergences

    rng = np.random.default_rng(5)

    def log_softmax(x):
        x = x - x.max(axis=-1, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))

    wide = log_softmax(rng.normal(0, 3, (2, DEVICE_DIVERGENCE_ROWS + 5, 151_936))).astype(np.float32)  # two blocks
    narrow = log_softmax(rng.normal(0, 2, (2, 9, 6)))
    narrow[0, 0], narrow[1, 0] = narrow[1, 0], narrow[1, 0]  # identical rows
    narrow[0, 1, :3] = -np.inf  # zeros on one side: KL one way +inf, the other finite
    narrow[0, 1] = log_softmax(narrow[0, 1])
    narrow[:, 2] = -np.inf
    narrow[0, 2, 0] = narrow[1, 2, 5] = 0.0  # one-hot on disjoint ids: both KLs +inf, JS log 2, TV 1
    narrow[0, 3, 2:] = narrow[1, 3, 2:] = -np.inf  # zeros shared by both
    narrow[:, 3] = log_softmax(narrow[:, 3])
    for student, teacher in (wide, narrow):
        got = device_divergences(torch.as_tensor(student), torch.as_tensor(teacher))
        want = all_divergences(student, teacher)
        for name, value in want.items():
            assert np.array_equal(np.isinf(got[name]), np.isinf(value)), name
            np.testing.assert_allclose(got[name], value, rtol=1e-9, atol=1e-13, err_msg=name)
    assert np.isinf(got["kl"][1]) != np.isinf(got["reverse_kl"][1]) and np.isinf(got["kl"][2])
    assert got["js"][2] == pytest.approx(np.log(2)) and got["tv"][2] == pytest.approx(1.0) and got["kl"][0] == 0


def test_a_model_handed_over_is_not_said_to_be_loaded_again(paths, plain, caplog):
    """`odiag validate` hands its training model to a new backend at every step, lm-eval its own: "loaded ... on
    cpu" at INFO once per step drowned the progress lines, and nothing was read from disk."""
    import logging

    with caplog.at_level(logging.INFO, logger="harness.backends.hf"):
        HFBackend.from_model(plain["student"], ModelSpec(paths["student"]))
        assert not [r for r in caplog.records if r.levelno >= logging.INFO and "loaded" in r.getMessage()]
        HFBackend({STUDENT: ModelSpec(paths["student"])})
        assert [r for r in caplog.records if r.levelno == logging.INFO and "loaded" in r.getMessage()]
