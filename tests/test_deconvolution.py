"""bench/deconvolution.py: the empirical-Bayes cosine recovers a mean alignment that plug-in cosines attenuate,
when the positions come from its own model."""

import importlib.util
import sys
from pathlib import Path

import numpy as np

from harness.core import alignment_score, gkd_gradient, ideal_gradient

_spec = importlib.util.spec_from_file_location("bench_deconvolution", Path(__file__).parents[1] / "bench" / "deconvolution.py")
deconv = sys.modules.setdefault("bench_deconvolution", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(deconv)


def _positions_from_the_model(count: int, visits: int, rng: np.random.Generator):
    """Positions whose centred Q is ρ (a ê + √(1 − a²) v), half well aligned with a large spread, half
    weakly aligned with a spread below the noise of ``visits`` visits; rewards are binomial."""
    out, exact = [], []
    while len(out) < count:
        m = int(rng.integers(2, 6))
        pi = rng.dirichlet(np.full(m, 2.0))
        pi_T = rng.dirichlet(np.full(m, 2.0))
        basis = deconv.off_one_basis(m)
        e = basis @ (basis.T @ (np.log(pi_T) - np.log(pi)))
        e /= np.linalg.norm(e)
        a, rho = (0.9, rng.uniform(0.1, 0.3)) if len(out) % 2 else (0.2, rng.uniform(0.01, 0.04))
        v = basis @ rng.standard_normal(m - 1)
        v -= (v @ e) * e
        norm = np.linalg.norm(v)
        direction = e * np.sign(a) if m == 2 or norm < 1e-9 else a * e + np.sqrt(1 - a * a) * v / norm
        q = 0.5 + rho * direction
        if (q <= 0.02).any() or (q >= 0.98).any():
            continue
        n = np.full(m, float(visits))
        out.append(deconv.Position(0, 0, pi, n, rng.binomial(visits, q).astype(float), [pi_T]))
        exact.append(alignment_score(ideal_gradient(pi, q), gkd_gradient(pi, pi_T)))
    return out, np.array(exact)


def test_deconvolved_cosines_recover_the_mean_alignment_that_plug_in_cosines_attenuate():
    rng = np.random.default_rng(11)
    positions, exact = _positions_from_the_model(400, 20, rng)
    terms = [deconv.position_terms(p, rng)[0] for p in positions]
    prior = deconv.fit_prior(terms)
    deconvolved = np.array([deconv.posterior_cosine(t, prior) for t in terms])
    plain = np.array([alignment_score(ideal_gradient(p.pi_A, p.w_A / p.n_A), gkd_gradient(p.pi_A, p.pi_T_A[0]))
                      if np.ptp(p.w_A) > 0 else 0.0 for p in positions])
    print(f"exact {exact.mean():.3f}, plain {plain.mean():.3f}, deconvolved {deconvolved.mean():.3f}")
    assert exact.mean() - plain.mean() > 0.08  # the attenuation this bench is about
    assert abs(deconvolved.mean() - exact.mean()) < 0.4 * (exact.mean() - plain.mean())
    assert (np.abs(deconvolved) <= 1 + 1e-9).all()


def test_prior_weights_are_a_distribution_and_a_lone_direction_gives_a_sign():
    rng = np.random.default_rng(3)
    positions, _ = _positions_from_the_model(40, 20, rng)
    terms = [deconv.position_terms(p, rng)[0] for p in positions]
    prior = deconv.fit_prior(terms)
    assert prior.shape == (len(deconv.A_GRID), len(deconv.R_GRID)) and abs(prior.sum() - 1) < 1e-9 and (prior >= 0).all()
    two = next(t for t, p in zip(terms, positions, strict=True) if len(p.pi_A) == 2)
    assert set(np.unique(np.round(np.abs(two.cos_A_D), 9))) <= {1.0}  # two children: g* and g_T lie on one line


def test_a_row_setting_n_min_is_refused_not_ignored():
    """Every row here is estimated at the shape's n_min: `--row paper:n_min=5` was labelled and printed
    with numbers identical to the reference row's."""
    import subprocess

    script = Path(__file__).resolve().parents[1] / "bench" / "deconvolution.py"
    done = subprocess.run([sys.executable, script, "--shapes", "short", "--seeds", "1", "--questions", "1", "--jobs", "1",
                           "--row", "paper:n_min=5"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "n_min is the shape's here" in done.stderr and "Traceback" not in done.stderr
