"""Pure linear algebra of the edit (torch only, float64 inside, no open_clip, no Lightning).

Vectors are columns: ``F`` (n x m_f) stacks forget directions, ``R`` (n x m_r) retain directions.
Every map ``M`` (n x n) acts on column embeddings, ``x' = M x``; it is what the injected
``nn.Linear`` holds as its weight.
"""
from __future__ import annotations

import torch


def _check(X: torch.Tensor, name: str, n: int | None = None) -> torch.Tensor:
    if X.dim() != 2:
        raise ValueError(f"`{name}` must be a 2-D (dim x count) matrix, got shape {tuple(X.shape)}")
    if n is not None and X.shape[0] != n:
        raise ValueError(f"`{name}` has dimension {X.shape[0]}, expected {n} (vectors are columns)")
    if not torch.isfinite(X).all():
        raise ValueError(f"`{name}` has NaN or inf entries")
    return X.double()


def orth(X: torch.Tensor, energy: float = 1.0, tol: float = 1e-6, max_rank: int | None = None,
         scale: float | None = None) -> torch.Tensor:
    """Orthonormal basis (n x k) of the column span of ``X``.

    ``k`` is the smallest rank whose singular values keep ``energy`` of the squared spectrum,
    never counting singular values below ``tol`` times ``scale`` (default: the largest singular
    value of ``X``); at most ``max_rank``.
    """
    if not 0.0 < energy <= 1.0:
        raise ValueError(f"`energy`={energy} must be in (0, 1]")
    X = _check(X, "X")
    if X.shape[1] == 0 or X.abs().max() == 0:
        return X.new_zeros(X.shape[0], 0)
    U, S, _ = torch.linalg.svd(X, full_matrices=False)
    keep = int((S > tol * (S[0] if scale is None else scale)).sum())
    cum = torch.cumsum(S[:keep] ** 2, 0) / (S[:keep] ** 2).sum()
    k = min(keep, int((cum < energy - 1e-12).sum()) + 1)
    return U[:, : min(k, max_rank or k)]


def projector(U: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """``P = I - alpha U U^T``: removes ``alpha`` of every component in span(U) (U orthonormal)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"`alpha`={alpha} must be in [0, 1] (0 = no edit, 1 = full removal)")
    U = _check(U, "U")
    return torch.eye(U.shape[0], dtype=U.dtype) - alpha * U @ U.T


def nullspace_basis(F: torch.Tensor, R: torch.Tensor | None = None, energy: float = 1.0,
                    retain_energy: float = 1.0, max_rank: int | None = None) -> torch.Tensor:
    """``U_f = orth((I - U_r U_r^T) F)``, ``U_r = orth(R)``: forget directions with every retained
    direction protected exactly."""
    F = _check(F, "F")
    # tol is relative to F, not to what is left of it: F inside span(R) leaves only rounding noise
    scale = float(torch.linalg.matrix_norm(F, ord=2)) if F.numel() else 0.0
    if R is not None and R.shape[1]:
        U_r = orth(_check(R, "R", F.shape[0]), retain_energy)
        F = F - U_r @ (U_r.T @ F)
    return orth(F, energy, max_rank=max_rank, scale=scale)


def nullspace_projector(F: torch.Tensor, R: torch.Tensor | None = None, alpha: float = 1.0,
                        energy: float = 1.0, retain_energy: float = 1.0, max_rank: int | None = None) -> torch.Tensor:
    """The exact multimodal-nullspace edit ``P = I - alpha U_f U_f^T`` (see :func:`nullspace_basis`)."""
    return projector(nullspace_basis(F, R, energy, retain_energy, max_rank), alpha)


def regularized_map(F: torch.Tensor, R: torch.Tensor | None = None, lam: float = 30.0, mu: float = 1.0,
                    F0: torch.Tensor | None = None) -> torch.Tensor:
    """The closed-form map minimising ``||W - I||^2 + lam ||W F - F0||^2 + mu ||W R - R||^2``:

    ``W* = (I + lam F0 F^T + mu R R^T) (I + lam F F^T + mu R R^T)^-1``  (F0 = 0 sends F to zero).
    With ``mu = 0`` and orthonormal F it is the partial projector with alpha = lam / (1 + lam).
    """
    if lam < 0 or mu < 0:
        raise ValueError(f"`lam`={lam} and `mu`={mu} must be >= 0")
    F = _check(F, "F")
    n = F.shape[0]
    R = _check(R, "R", n) if R is not None else F.new_zeros(n, 0)
    eye = torch.eye(n, dtype=F.dtype)
    A = eye + lam * F @ F.T + mu * R @ R.T
    B = eye + mu * R @ R.T
    if F0 is not None:
        F0 = _check(F0, "F0", n)
        if F0.shape != F.shape:
            raise ValueError(f"`F0` has shape {tuple(F0.shape)}, expected the shape of F {tuple(F.shape)}")
        B = B + lam * F0 @ F.T
    return torch.linalg.solve(A, B, left=False)  # B A^-1 (A symmetric positive definite)


def regularized_edit(F: torch.Tensor, R: torch.Tensor, lam: float, mu: float,
                     alpha: float = 1.0) -> tuple[torch.Tensor, int]:
    """The regularised solver's edit from forget / retain columns: :func:`regularized_map` of the unit-norm
    columns, scaled ``I + alpha (W - I)``.

    Returns:
        The map (float32) and the rank of the unit-norm forget columns.
    """
    Fn = F / F.norm(dim=0, keepdim=True).clamp(min=1e-12)
    Rn = R / R.norm(dim=0, keepdim=True).clamp(min=1e-12)
    M = regularized_map(Fn, Rn, lam, mu)
    M = torch.eye(M.shape[0], dtype=M.dtype) + alpha * (M - torch.eye(M.shape[0], dtype=M.dtype))
    return M.float(), int(torch.linalg.matrix_rank(Fn))

def two_sided_map(A: torch.Tensor, B: torch.Tensor, V: torch.Tensor, Vt: torch.Tensor) -> torch.Tensor:
    """The map ``M`` minimising ``||M - I||^2 + ||A^T M - B^T||^2 + ||M V - Vt||^2``.

    ``A -> B`` constrains how *text* directions read the edited embeddings (``M^T a ~ b``: the
    score of every image against ``a`` becomes its score against ``b``); ``V -> Vt`` moves *image*
    directions (``M v ~ vt``). Scale columns to weight them. Setting the gradient to zero gives the
    Sylvester equation ``(I + A A^T) M + M (V V^T) = I + A B^T + Vt V^T``, solved exactly in the
    eigenbases of both sides (every denominator is >= 1, so it is always well conditioned). With
    ``M = I + X`` the equation for ``X`` has its right side ``A (B - A)^T + (Vt - V) V^T`` inside the
    span ``S`` of all four inputs, and both operators keep ``S`` and vanish on its complement, so
    ``X = Q X_r Q^T`` is solved in an orthonormal basis ``Q`` of ``S`` (r x r instead of n x n; exact).
    """
    A, B = _check(A, "A"), _check(B, "B")
    n = A.shape[0]
    V, Vt = _check(V, "V", n), _check(Vt, "Vt", n)
    if A.shape != B.shape or V.shape != Vt.shape:
        raise ValueError(f"targets must match their directions: A {tuple(A.shape)} vs B {tuple(B.shape)}, "
                         f"V {tuple(V.shape)} vs Vt {tuple(Vt.shape)}")
    span = torch.cat([A, B, V, Vt], 1)
    Q = torch.linalg.qr(span)[0] if span.shape[1] < n else torch.eye(n, dtype=A.dtype)
    A, B, V, Vt = (Q.T @ Z for Z in (A, B, V, Vt))
    lp, Up = torch.linalg.eigh(torch.eye(Q.shape[1], dtype=A.dtype) + A @ A.T)
    lq, Uq = torch.linalg.eigh(V @ V.T)
    C = A @ (B - A).T + (Vt - V) @ V.T
    X = Up @ ((Up.T @ C @ Uq) / (lp[:, None] + lq.clamp(min=0)[None, :])) @ Uq.T
    return torch.eye(n, dtype=A.dtype) + Q @ X @ Q.T


def oblique_eraser(U: torch.Tensor, S: torch.Tensor | None = None, ridge: float = 1e-3) -> torch.Tensor:
    """The rank-k concept eraser ``E = I - U (V^T U)^-1 V^T``, ``V = S^-1 U`` (LEACE's closed form for a
    concept whose class-conditional mean differences span ``U``, n x k; Belrose et al. 2023).

    ``E`` is a projection (``E E = E``) with ``E U = 0``: any two distributions whose means differ by
    a vector in span(U) have equal means after it, so no linear probe separates them by their means.
    ``S`` (n x n, the covariance of the data) picks the reading directions that change the data least
    in the Mahalanobis sense, regularised by ``ridge`` times its mean eigenvalue; ``S=None`` gives
    the orthogonal projector ``I - Q Q^T`` onto the complement of span(U).
    """
    U = orth(_check(U, "U"))
    n = U.shape[0]
    eye = torch.eye(n, dtype=U.dtype)
    if U.shape[1] == 0:
        return eye
    if S is None:
        return eye - U @ U.T
    S = _check(S, "S", n)
    if S.shape != (n, n):
        raise ValueError(f"`S` has shape {tuple(S.shape)}, expected ({n}, {n})")
    V = torch.linalg.solve(S + ridge * torch.trace(S) / n * eye, U)
    return eye - U @ torch.linalg.solve(V.T @ U, V.T)
