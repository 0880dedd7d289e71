"""Invariants of the edit's linear algebra (lightning_unlearn.nullspace): pure torch, float64."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_unlearn import nullspace

# derandomize: the same examples on every run (no flaky CI); database=None: no .hypothesis folder
SETTINGS = settings(max_examples=40, deadline=None, derandomize=True, database=None)


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def orthonormal(n, k, seed=0):
    return torch.linalg.qr(randn(n, k, seed=seed))[0]


@st.composite
def problems(draw, max_n=24, min_retain=0):
    """(F, R): random forget / retain columns in dimension n (R may be empty)."""
    n = draw(st.integers(4, max_n))
    m_r = draw(st.integers(min_retain, n // 2))
    m_f = draw(st.integers(1, n))
    seed = draw(st.integers(0, 2 ** 31 - 1))
    scale = draw(st.sampled_from([1e-3, 1.0, 1e3]))
    F = scale * randn(n, m_f, seed=seed)
    R = randn(n, m_r, seed=seed + 1)
    return F, R


def eye_like(X):
    return torch.eye(X.shape[0], dtype=torch.float64)


# --------------------------------------------------------------------------- exact projector


@SETTINGS
@given(problems(), st.floats(0.0, 1.0))
def test_projector_is_symmetric_with_eigenvalues_one_and_one_minus_alpha(FR, alpha):
    F, R = FR
    U = nullspace.nullspace_basis(F, R)
    P = nullspace.nullspace_projector(F, R, alpha=alpha)
    assert P.dtype == torch.float64 and P.shape == (F.shape[0],) * 2
    assert torch.allclose(P, P.T, atol=1e-12)
    assert torch.allclose(U.T @ U, torch.eye(U.shape[1], dtype=torch.float64), atol=1e-10)  # orthonormal basis
    ev = torch.linalg.eigvalsh(P)
    k = U.shape[1]
    expected = torch.tensor([1 - alpha] * k + [1.0] * (F.shape[0] - k), dtype=torch.float64).sort().values
    assert torch.allclose(ev, expected, atol=1e-10)


@SETTINGS
@given(problems())
def test_full_projector_is_idempotent(FR):
    F, R = FR
    P = nullspace.nullspace_projector(F, R, alpha=1.0)
    assert torch.allclose(P @ P, P, atol=1e-10)


@SETTINGS
@given(problems(min_retain=1))
def test_protected_retain_vectors_are_unchanged(FR):
    F, R = FR
    P = nullspace.nullspace_projector(F, R, alpha=1.0)
    assert torch.allclose(P @ R, R, atol=1e-9 * (1 + R.abs().max()))
    # ... for any alpha, and for any vector in span(R)
    P_half = nullspace.nullspace_projector(F, R, alpha=0.5)
    r = R @ randn(R.shape[1], 3, seed=7)
    assert torch.allclose(P_half @ r, r, atol=1e-9 * (1 + r.abs().max()))


@SETTINGS
@given(problems())
def test_forget_components_outside_the_retain_span_are_removed(FR):
    F, R = FR
    P = nullspace.nullspace_projector(F, R, alpha=1.0)
    Q_r = nullspace.orth(R) if R.shape[1] else R.new_zeros(R.shape[0], 0)
    F_perp = F - Q_r @ (Q_r.T @ F)  # the part of F that span(R) does not protect
    tol = 1e-5 * torch.linalg.matrix_norm(F, ord=2)  # orth() drops singular values below 1e-6 of the largest
    assert torch.linalg.matrix_norm(P @ F_perp, ord=2) <= tol
    # what survives of F is exactly its protected part
    assert torch.linalg.matrix_norm(P @ F - Q_r @ (Q_r.T @ F), ord=2) <= tol


@SETTINGS
@given(problems(), st.floats(0.0, 1.0))
def test_partial_alpha_scales_removed_components(FR, alpha):
    F, R = FR
    U = nullspace.nullspace_basis(F, R)
    P = nullspace.nullspace_projector(F, R, alpha=alpha)
    assert torch.allclose(P @ U, (1 - alpha) * U, atol=1e-10)
    # the orthogonal complement of span(U) is untouched
    v = randn(F.shape[0], 4, seed=3)
    v_perp = v - U @ (U.T @ v)
    assert torch.allclose(P @ v_perp, v_perp, atol=1e-10)
    assert torch.allclose(P, nullspace.projector(U, alpha), atol=0)


def test_projector_without_retain_and_alpha_zero():
    F = randn(10, 3)
    assert torch.equal(nullspace.nullspace_projector(F, alpha=0.0), torch.eye(10, dtype=torch.float64))
    P = nullspace.nullspace_projector(F, None)
    assert torch.allclose(P @ F, torch.zeros_like(F), atol=1e-12 * F.abs().max())
    assert torch.allclose(nullspace.nullspace_projector(F, F.new_zeros(10, 0)), P, atol=0)


def test_forget_inside_the_retain_span_gives_the_identity():
    R = randn(12, 4)
    F = R @ randn(4, 2, seed=1)  # what is left after protecting R is rounding noise, not directions
    assert nullspace.nullspace_basis(F, R).shape == (12, 0)
    assert torch.allclose(nullspace.nullspace_projector(F, R), torch.eye(12, dtype=torch.float64), atol=0)


@SETTINGS
@given(problems(min_retain=1), st.integers(1, 3))
def test_forget_columns_inside_the_retain_span_add_no_rank(FR, extra):
    F, R = FR
    mixed = torch.cat([F, R @ randn(R.shape[1], extra, seed=5)], 1)
    assert nullspace.nullspace_basis(mixed, R).shape[1] == nullspace.nullspace_basis(F, R).shape[1]


def test_max_rank_and_energy_limit_the_removed_rank():
    F = randn(16, 6)
    assert nullspace.nullspace_basis(F, max_rank=2).shape == (16, 2)
    assert nullspace.nullspace_basis(F, energy=1.0).shape == (16, 6)
    assert nullspace.nullspace_basis(F, energy=0.3).shape[1] < 6


# --------------------------------------------------------------------------- orth


def with_spectrum(n, s, seed=0):
    """An n x len(s) matrix with singular values ``s``."""
    U = orthonormal(n, len(s), seed)
    V = orthonormal(len(s), len(s), seed + 1)
    return U @ torch.diag(torch.tensor(s, dtype=torch.float64)) @ V.T


@pytest.mark.parametrize("energy, k", [(1.0, 4), (0.9999, 4), (0.999, 3), (0.97, 3), (0.95, 2), (0.7, 2), (0.6, 1)])
def test_orth_energy_cut(energy, k):
    s = [4.0, 3.0, 1.0, 0.1]  # squared: 16, 9, 1, 0.01 -> cumulative energy 0.6151, 0.9612, 0.99962, 1
    X = with_spectrum(10, s)
    U = nullspace.orth(X, energy=energy)
    assert U.shape == (10, k)
    assert torch.allclose(U.T @ U, torch.eye(k, dtype=torch.float64), atol=1e-12)
    # U spans the top-k left singular vectors of X
    top = torch.linalg.svd(X, full_matrices=False)[0][:, :k]
    assert torch.allclose(U @ U.T, top @ top.T, atol=1e-10)


@pytest.mark.parametrize("tol, k", [(1e-6, 4), (1e-4, 3), (0.3, 2), (0.9, 1), (2.0, 0)])
def test_orth_tol_drops_small_singular_values(tol, k):
    X = with_spectrum(8, [1.0, 0.5, 0.2, 1e-5])
    assert nullspace.orth(X, tol=tol).shape == (8, k)
    # ``scale`` replaces the largest singular value as the reference of ``tol``
    assert nullspace.orth(X, tol=tol / 10, scale=10.0).shape == (8, k)
    # a direction holding < 1e-12 of the energy is dropped even at energy=1 (and default tol)
    assert nullspace.orth(with_spectrum(8, [1.0, 0.5, 1e-7])).shape == (8, 2)


@SETTINGS
@given(st.integers(2, 20), st.integers(1, 6), st.integers(0, 2 ** 31 - 1))
def test_orth_spans_the_columns(n, m, seed):
    X = randn(n, m, seed=seed)
    U = nullspace.orth(X)
    assert U.shape == (n, min(n, m))
    assert torch.allclose(U @ (U.T @ X), X, atol=1e-10 * (1 + X.abs().max()))


def test_orth_of_empty_or_zero_or_rank_deficient_input():
    assert nullspace.orth(torch.zeros(5, 0)).shape == (5, 0)
    assert nullspace.orth(torch.zeros(5, 3)).shape == (5, 0)
    x = randn(7, 1)
    assert nullspace.orth(torch.cat([x, 2 * x, -x], 1)).shape == (7, 1)  # rank 1
    assert nullspace.orth(randn(6, 4), max_rank=2).shape == (6, 2)
    assert nullspace.orth(torch.ones(4, 2, dtype=torch.float32)).dtype == torch.float64


# --------------------------------------------------------------------------- regularized map


@SETTINGS
@given(st.integers(3, 20), st.integers(1, 3), st.floats(0.0, 1e4), st.integers(0, 2 ** 31 - 1))
def test_regularized_map_with_mu_zero_is_the_partial_projector(n, k, lam, seed):
    k = min(k, n)
    F = orthonormal(n, k, seed)
    W = nullspace.regularized_map(F, None, lam=lam, mu=0.0)
    assert torch.allclose(W, nullspace.projector(F, alpha=lam / (1 + lam)), atol=1e-10)
    R = randn(n, 2, seed=seed + 1)  # mu = 0 ignores R
    assert torch.allclose(nullspace.regularized_map(F, R, lam=lam, mu=0.0), W, atol=1e-10)


def test_regularized_map_limits():
    F, R = randn(12, 2), randn(12, 3, seed=1)
    eye = torch.eye(12, dtype=torch.float64)
    assert torch.allclose(nullspace.regularized_map(F, R, lam=0.0, mu=5.0), eye, atol=1e-12)
    W = nullspace.regularized_map(F, R, lam=1e9, mu=1e9)  # both hard constraints: W F = 0, W R = R
    assert (W @ F).abs().max() < 1e-5 * F.abs().max()
    assert torch.allclose(W @ R, R, atol=1e-5)


@SETTINGS
@given(st.integers(3, 16), st.integers(1, 3), st.integers(0, 2 ** 31 - 1), st.booleans())
def test_regularized_map_sends_F_to_F0_as_lam_grows(n, k, seed, with_retain):
    k = min(k, n - 1)
    F = orthonormal(n, k, seed)
    F0 = randn(n, k, seed=seed + 1)
    R = None
    if with_retain:  # a retain direction orthogonal to F (else the two objectives conflict)
        r = randn(n, 1, seed=seed + 2)
        R = r - F @ (F.T @ r)
    errs = []
    for lam in (1.0, 1e2, 1e4, 1e6):
        W = nullspace.regularized_map(F, R, lam=lam, mu=1.0, F0=F0)
        errs.append(float((W @ F - F0).norm()))
    assert all(a >= b for a, b in zip(errs, errs[1:]))
    assert errs[-1] <= 1e-4 * max(1.0, float(F0.norm()))
    if R is None:  # exact: W F = (F + lam F0) / (1 + lam)
        W = nullspace.regularized_map(F, None, lam=9.0, mu=1.0, F0=F0)
        assert torch.allclose(W @ F, (F + 9.0 * F0) / 10.0, atol=1e-10)


# --------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("alpha", [-0.1, 1.5, math.inf, -math.inf, math.nan])
def test_alpha_outside_unit_interval_raises(alpha):
    with pytest.raises(ValueError, match=r"`alpha`=" + str(alpha)):
        nullspace.projector(orthonormal(4, 1), alpha)
    with pytest.raises(ValueError, match=r"`alpha`=" + str(alpha)):
        nullspace.nullspace_projector(randn(4, 1), alpha=alpha)


@pytest.mark.parametrize("energy", [0.0, -0.5, 1.01, math.nan])
def test_energy_outside_range_raises(energy):
    with pytest.raises(ValueError, match=r"`energy`=" + str(energy)):
        nullspace.orth(randn(4, 2), energy=energy)


@pytest.mark.parametrize("fn", [nullspace.orth, nullspace.nullspace_basis, nullspace.nullspace_projector,
                                nullspace.regularized_map])
@pytest.mark.parametrize("shape", [(5,), (2, 3, 4), ()])
def test_non_matrix_input_raises_with_its_shape(fn, shape):
    with pytest.raises(ValueError, match=r"2-D .*got shape " + str(tuple(shape)).replace("(", r"\(").replace(")", r"\)")):
        fn(torch.ones(shape))


@pytest.mark.parametrize("fn", [nullspace.orth, nullspace.nullspace_basis, nullspace.nullspace_projector,
                                nullspace.regularized_map])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_nan_or_inf_input_raises(fn, bad):
    X = randn(6, 2)
    X[3, 1] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        fn(X)


def test_nan_in_retain_or_target_raises_naming_it():
    F, R = randn(6, 2), randn(6, 2, seed=1)
    R[0, 0] = math.nan
    with pytest.raises(ValueError, match="`R` has NaN"):
        nullspace.nullspace_projector(F, R)
    with pytest.raises(ValueError, match="`R` has NaN"):
        nullspace.regularized_map(F, R)
    F0 = randn(6, 2, seed=2)
    F0[1, 1] = math.inf
    with pytest.raises(ValueError, match="`F0` has NaN"):
        nullspace.regularized_map(F, None, F0=F0)


def test_dimension_mismatch_raises_with_both_dimensions():
    F = randn(6, 2)
    with pytest.raises(ValueError, match=r"`R` has dimension 5, expected 6"):
        nullspace.nullspace_projector(F, randn(5, 2))
    with pytest.raises(ValueError, match=r"`R` has dimension 7, expected 6"):
        nullspace.regularized_map(F, randn(7, 1))
    with pytest.raises(ValueError, match=r"`F0` has dimension 4, expected 6"):
        nullspace.regularized_map(F, None, F0=randn(4, 2))
    with pytest.raises(ValueError, match=r"`F0` has shape \(6, 3\), expected the shape of F \(6, 2\)"):
        nullspace.regularized_map(F, None, F0=randn(6, 3))


@pytest.mark.parametrize("lam, mu", [(-1.0, 1.0), (1.0, -0.5)])
def test_negative_weights_raise(lam, mu):
    with pytest.raises(ValueError, match=rf"`lam`={lam} and `mu`={mu} must be >= 0"):
        nullspace.regularized_map(randn(4, 1), randn(4, 1, seed=1), lam=lam, mu=mu)


@SETTINGS
@given(problems(min_retain=1), st.floats(0.1, 100.0), st.floats(0.0, 10.0), st.floats(0.0, 1.0))
def test_regularized_edit_is_the_map_of_unit_columns_scaled_by_alpha(FR, lam, mu, alpha):
    F, R = FR
    M, rank = nullspace.regularized_edit(F, R, lam, mu, alpha)
    Fn, Rn = F / F.norm(dim=0), R / R.norm(dim=0)
    W = nullspace.regularized_map(Fn, Rn, lam, mu)
    assert M.dtype == torch.float32 and rank == torch.linalg.matrix_rank(Fn)
    assert torch.allclose(M.double(), eye_like(W) + alpha * (W - eye_like(W)), atol=1e-5)
    full, _ = nullspace.regularized_edit(F, R, lam, mu)  # alpha 1 (the two-sided solver's stage 1)
    assert torch.allclose(full.double(), W, atol=1e-5)
    scaled, _ = nullspace.regularized_edit(2.0 * F, 3.0 * R, lam, mu, alpha)  # the columns' norms do not count
    assert torch.allclose(scaled, M, atol=1e-5)


# --------------------------------------------------------------------------- two-sided map (the default solver)


@st.composite
def two_sided_problems(draw, max_n=12):
    """(A, B, V, Vt): text directions and their targets, image directions and their targets."""
    n = draw(st.integers(2, max_n))
    k, m = draw(st.integers(0, n + 2)), draw(st.integers(0, n + 2))
    seed = draw(st.integers(0, 2 ** 31 - 1))
    scale = draw(st.sampled_from([1e-2, 1.0, 30.0]))  # the library weights columns up to ~30 (sqrt 1000)
    return (scale * randn(n, k, seed=seed), scale * randn(n, k, seed=seed + 1),
            scale * randn(n, m, seed=seed + 2), scale * randn(n, m, seed=seed + 3))


@SETTINGS
@given(two_sided_problems())
def test_two_sided_map_solves_its_sylvester_equation(ABV):
    A, B, V, Vt = ABV
    M = nullspace.two_sided_map(A, B, V, Vt)
    eye = eye_like(A)
    lhs = (eye + A @ A.T) @ M + M @ (V @ V.T)
    rhs = eye + A @ B.T + Vt @ V.T
    assert float((lhs - rhs).norm()) <= 1e-9 * max(1.0, float(rhs.norm()), float(lhs.norm()))


@SETTINGS
@given(two_sided_problems())
def test_two_sided_map_is_the_identity_when_nothing_moves(ABV):
    A, _, V, _ = ABV
    M = nullspace.two_sided_map(A, A, V, V)
    torch.testing.assert_close(M, eye_like(A), atol=1e-9, rtol=0)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("n,k,m", [(5, 3, 2), (9, 1, 2)])  # the span of A, B, V, Vt: all of R^n / a subspace
def test_two_sided_map_matches_a_brute_force_least_squares(seed, n, k, m):
    """vec(M) minimising the stacked least squares [I; I (x) A^T; V^T (x) I] vec(M) ~ [vec I; vec B^T; vec Vt]."""
    A, B, V, Vt = (randn(n, c, seed=10 * seed + i) for i, c in enumerate((k, k, m, m)))
    vec = lambda X: X.T.reshape(-1)  # noqa: E731 (column-major, as in the kronecker identities)
    eye = torch.eye(n, dtype=torch.float64)
    K = torch.cat([torch.eye(n * n, dtype=torch.float64), torch.kron(eye, A.T.contiguous()),
                   torch.kron(V.T.contiguous(), eye)])
    rhs = torch.cat([vec(eye), vec(B.T), vec(Vt)])
    brute = torch.linalg.lstsq(K, rhs[:, None]).solution[:, 0].reshape(n, n).T
    torch.testing.assert_close(nullspace.two_sided_map(A, B, V, Vt), brute, atol=1e-10, rtol=1e-8)


def test_two_sided_map_meets_heavily_weighted_constraints():
    """A weight w scales a column: the constraint then dominates ||M - I|| (each side alone; together
    ``A^T M V`` is constrained twice and the two targets need not agree)."""
    A, B, V, Vt, none = randn(8, 2, seed=1), randn(8, 2, seed=2), randn(8, 2, seed=3), randn(8, 2, seed=4), randn(8, 0)
    w = 1e4
    torch.testing.assert_close(nullspace.two_sided_map(w * A, w * B, none, none).T @ A, B, atol=1e-6, rtol=0)
    torch.testing.assert_close(nullspace.two_sided_map(none, none, w * V, w * Vt) @ V, Vt, atol=1e-6, rtol=0)


def test_two_sided_map_refuses_mismatched_targets():
    with pytest.raises(ValueError, match=r"A \(4, 2\) vs B \(4, 3\)"):
        nullspace.two_sided_map(randn(4, 2), randn(4, 3), randn(4, 1), randn(4, 1))
    with pytest.raises(ValueError, match=r"dim"):
        nullspace.two_sided_map(randn(4, 2), randn(4, 2), randn(5, 1), randn(5, 1))


def test_shared_shift_has_one_direction_per_domain_and_the_coefficient_of_each_own_g():
    from lightning_unlearn.directions import shared_shift
    torch.manual_seed(0)
    n, p = 16, 3
    domains = ["sketch", "sketch", "cartoon", "sketch"]  # cells: three classes in sketch, one in cartoon
    g = torch.randn(n, len(domains)).repeat_interleave(p, 1)
    u, scale = shared_shift(g, domains, p)
    assert u.shape == g.shape and scale.shape == (len(domains) * p,)
    sketch = [i * p + j for i, d in enumerate(domains) for j in range(p) if d == "sketch"]
    assert torch.allclose(u[:, sketch], u[:, sketch[:1]].expand(-1, len(sketch)))  # one shift per domain
    ug = (u * g).sum(0)  # coefficient 1 on every g of the domain (a plain sum of the g's would not be)
    assert torch.allclose(ug[sketch], torch.ones(len(sketch)), atol=0.01)
    step = ((scale * u) * g).sum(0)  # a step of scale * u moves each prototype's coefficient as g does
    assert torch.allclose(step, (g * g).sum(0), rtol=1e-4)
    cartoon = [i * p + j for i, d in enumerate(domains) for j in range(p) if d == "cartoon"]
    assert torch.allclose((scale * u)[:, cartoon], g[:, cartoon], atol=1e-5)  # one class: its own g
    twin = torch.cat([g[:, :p], g[:, :p]], 1)  # two equal g's in one domain: the shift still reaches each
    u2, s2 = shared_shift(twin, ["photo", "photo"], p)
    assert torch.allclose(((s2 * u2) * twin).sum(0), (twin * twin).sum(0), rtol=1e-4)
