"""The linear algebra of "what did the update learn" (Hu et al. 2021, section 7), in float64 on the CPU.

For one weight W (m, n) and its update dW (m, n) = U diag(S) V^T (U (m, k), S (k,), V (n, k), S descending):

    energy_top(S, k)        |top-k part of dW|_F^2 / |dW|_F^2 = sum(S[:k]^2) / sum(S^2)
    rank_for_energy(S, f)   the fewest directions holding a fraction f of |dW|_F^2 (f = 0.9, 0.99)
    effective_rank(S)       exp(entropy of S / sum(S)) (Roy & Vetterli 2007): 1 for one direction, k for
                            k equal ones; between the two it counts the directions that carry weight
    subspace_similarity     phi(i, j) = |V1[:, :i]^T V2[:, :j]|_F^2 / min(i, j): 1 where one top subspace
                            contains the other, about max(i, j) / n for unrelated random ones
    amplification           |dW|_F / |U_r^T W V_r|_F: how much dW amplifies the directions it acts on,
                            against r random directions as the control

A LoRA update dW = B A (scaling folded into B, rank R) is never formed to be decomposed: with B = Q_B R_B and
A^T = Q_A R_A (thin QR), dW = Q_B (R_B R_A^T) Q_A^T, so the SVD of the (R, R) core gives dW's exactly
(`svd_of_product`). Letters: m out features, n in features, R adapter rank, k kept directions.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

F64 = torch.float64


class SVD(NamedTuple):
    U: torch.Tensor  # (m, k) left singular vectors, columns
    S: torch.Tensor  # (k,) singular values, descending
    V: torch.Tensor  # (n, k) right singular vectors, columns


def svd(dW: torch.Tensor) -> SVD:
    """Thin SVD of a dense (m, n) matrix in float64 (LAPACK is faster on the tall orientation)."""
    dW = dW.to(F64)
    if dW.shape[0] < dW.shape[1]:
        V, S, Uh = torch.linalg.svd(dW.T, full_matrices=False)  # dW^T = V S U^T
        return SVD(Uh.T, S, V)
    U, S, Vh = torch.linalg.svd(dW, full_matrices=False)
    return SVD(U, S, Vh.T)


def svd_of_product(B: torch.Tensor, A: torch.Tensor) -> SVD:
    """SVD of dW = B @ A (B (m, R), A (R, n)) without forming the (m, n) matrix: R values and vectors."""
    QB, RB = torch.linalg.qr(B.to(F64))  # (m, R), (R, R)
    QA, RA = torch.linalg.qr(A.to(F64).T)  # (n, R), (R, R)
    Uc, S, Vch = torch.linalg.svd(RB @ RA.T)  # the (R, R) core
    return SVD(QB @ Uc, S, QA @ Vch.T)


def numerical_rank(S: torch.Tensor, shape: tuple[int, int], floor: float = 0.0) -> int:
    """Singular values above float64 round-off (numpy.linalg.matrix_rank's tolerance) and above `floor`:
    for W_final - W_base, the rounding of the stored weights (eps of their dtype x |W_final|_F bounds its
    spectral norm), which no training step can be told apart from."""
    if len(S) == 0 or S[0] == 0:
        return 0
    return int((S > max(S[0] * max(shape) * torch.finfo(F64).eps, floor)).sum())


def energy_top(S: torch.Tensor, k: int) -> float:
    """Fraction of |dW|_F^2 in the top-k directions (1.0 once k reaches the rank)."""
    e = S.to(F64) ** 2
    return float(e[:k].sum() / e.sum()) if e.sum() > 0 else 0.0


def rank_for_energy(S: torch.Tensor, fraction: float) -> int:
    """The fewest top directions that hold `fraction` of |dW|_F^2."""
    e = S.to(F64) ** 2
    if e.sum() == 0:
        return 0
    cum = torch.cumsum(e, 0) / e.sum()
    return int(torch.searchsorted(cum, torch.tensor(fraction - 1e-12, dtype=F64))) + 1


def effective_rank(S: torch.Tensor) -> float:
    """exp(H(p)) with p = S / sum(S) (Roy & Vetterli 2007)."""
    S = S.to(F64)
    S = S[S > 0]
    if len(S) == 0:
        return 0.0
    p = S / S.sum()
    return float(torch.exp(-(p * p.log()).sum()))


def subspace_similarity(V1: torch.Tensor, V2: torch.Tensor) -> torch.Tensor:
    """phi (I, J): phi[i-1, j-1] = |V1[:, :i]^T V2[:, :j]|_F^2 / min(i, j) for orthonormal columns V1 (n, I)
    and V2 (n, J), all i, j at once from the cumulative sums of the squared overlaps."""
    overlap = (V1.to(F64).T @ V2.to(F64)) ** 2  # (I, J): squared cosines between directions
    cum = overlap.cumsum(0).cumsum(1)  # cum[i-1, j-1] = |V1_i^T V2_j|_F^2
    i = torch.arange(1, V1.shape[1] + 1, dtype=F64)[:, None]
    j = torch.arange(1, V2.shape[1] + 1, dtype=F64)[None, :]
    return cum / torch.minimum(i, j)


def random_orthonormal(n: int, r: int, generator: torch.Generator) -> torch.Tensor:
    """(n, r) orthonormal columns spanning a uniformly random r-dimensional subspace."""
    Q, R = torch.linalg.qr(torch.randn(n, r, generator=generator, dtype=F64))
    return Q * torch.sign(torch.diagonal(R))  # the sign fix makes the distribution uniform (Haar)


def amplification(
    W: torch.Tensor, dW: SVD, r: int, draws: int, generator: torch.Generator
) -> dict[str, float | int]:
    """The paper's Table 7 for one matrix: |dW|_F / |U_r^T W V_r|_F with U_r, V_r the top-r singular vectors
    of dW, beside the same ratio for r random directions (mean |U^T W V|_F over `draws` pairs). A factor far
    above the random one: dW amplifies directions W barely uses."""
    W = W.to(F64)
    r = min(r, len(dW.S))
    norm_dW = float(dW.S.norm())
    proj = float((dW.U[:, :r].T @ W @ dW.V[:, :r]).norm())  # (r, m) (m, n) (n, r) -> (r, r)
    m, n = W.shape
    rand = [
        float((random_orthonormal(m, r, generator).T @ W @ random_orthonormal(n, r, generator)).norm())
        for _ in range(draws)
    ]
    proj_random = sum(rand) / len(rand)
    return {
        "r": r,
        "norm_dW": norm_dW,
        "proj_W_on_dW": proj,
        "proj_W_on_random": proj_random,
        "factor": norm_dW / proj if proj > 0 else math.inf,
        "factor_random": norm_dW / proj_random if proj_random > 0 else math.inf,
    }


def summarize(dW: SVD, shape: tuple[int, int], ks: tuple[int, ...], floor: float = 0.0) -> dict:
    """Spectrum numbers of one update: singular values (those above round-off), ranks, energy in the top-k
    directions."""
    S, rank = dW.S, numerical_rank(dW.S, shape, floor)
    return {
        "singular_values": [float(s) for s in S[:rank]],
        "norm_dW": float(S.norm()),
        "numerical_rank": rank,
        "noise_floor": floor,
        "effective_rank": effective_rank(S),
        "rank_90": rank_for_energy(S, 0.90),
        "rank_99": rank_for_energy(S, 0.99),
        "energy_top": {str(k): energy_top(S, k) for k in ks},
    }
