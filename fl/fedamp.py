"""FedAMP: personalised federated learning by attentive message passing (top layer, ``fl``).

Huang et al., "Personalized Cross-Silo Federated Learning on Non-IID Data",
AAAI 2021, in its HeurFedAMP form for deep networks. There is no global
model: every client keeps its own model ``w_i`` across rounds, and the
server keeps one personalised *cloud model* per client,

    u_i = sum_j xi_ij w_j,   xi_ii = self_weight,
    xi_ij = (1 - self_weight) exp(sigma cos(w_i, w_j)) / sum_{h != i} exp(sigma cos(w_i, w_h))

for ``j != i`` (the models uploaded this round). Clients with similar models
(in practice: similar data) get more of each other's weight. A client
trains its own model on ``F_i(w) + lam / (2 alpha_k) ||w - u_i||^2``: the
proximal term of :class:`fl.FedProx`, anchored at the cloud model instead of
a global model (``proximal_mu = lam / alpha_k``, the paper's personalised
step with server step size ``alpha_k``).

With ``secure=True`` the clients secret-share their models to the
aggregation parties of an ``smpc`` session and the cosine Gram matrix, the
attention weights and every cloud model are computed on shares
(:func:`secure_cloud_models`); client ``i`` learns only ``u_i``. ``smpc`` is
imported only when such a round runs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from fl.errors import AggregationError, ConfigError
from fl.strategy import FedAvg
from fl.types import FitConfig

__all__ = [
    "FedAMP",
    "SecureRoundCost",
    "attention_weights",
    "cloud_models",
    "cloud_models_on_shares",
    "secure_cloud_models",
    "secure_tolerance",
]


def _check_hyper(sigma: float, self_weight: float) -> None:
    if isinstance(sigma, bool) or not (isinstance(sigma, (int, float)) and math.isfinite(sigma)):
        raise ConfigError(f"`sigma` must be a finite number; got {sigma!r}")
    if sigma < 0:
        raise ConfigError(f"`sigma` must be >= 0; got {sigma}")
    if isinstance(self_weight, bool) or not (
        isinstance(self_weight, (int, float)) and 0 <= self_weight <= 1
    ):
        raise ConfigError(f"`self_weight` must be a number in [0, 1]; got {self_weight!r}")


def _check_models(models: torch.Tensor) -> None:
    if not isinstance(models, torch.Tensor):
        raise ConfigError(f"`models` must be a torch.Tensor; got {type(models).__name__}")
    if models.dim() != 2 or models.shape[0] < 1 or models.shape[1] < 1:
        raise ConfigError(
            f"`models` must be a 2-D tensor [n_clients >= 1, n_params >= 1]; "
            f"got shape {tuple(models.shape)}"
        )
    if not models.is_floating_point() or not bool(torch.isfinite(models).all()):
        raise ConfigError("`models` must be a finite floating-point tensor")


def attention_weights(models: torch.Tensor, *, sigma: float, self_weight: float) -> torch.Tensor:
    """HeurFedAMP's attention matrix ``xi`` of the stacked client models.

    Args:
        models: ``[n, d]``, one flat model per row.
        sigma: Scale of the cosine similarity (``>= 0``; 0 weighs the others equally).
        self_weight: ``xi_ii``, each client's weight on its own model, in [0, 1].

    Returns:
        ``[n, n]`` float64, rows summing to 1, ``xi_ii = self_weight`` (1 when
        ``n = 1``), ``xi_ij ∝ exp(sigma cos(w_i, w_j))`` off the diagonal. A
        zero model has cosine 0 with every model.

    Raises:
        ConfigError: Bad shapes or hyperparameters.
    """
    _check_models(models)
    _check_hyper(sigma, self_weight)
    n = models.shape[0]
    if n == 1:
        return torch.ones(1, 1, dtype=torch.float64)
    w = models.to(torch.float64)
    norms = w.norm(dim=1, keepdim=True)
    v = torch.where(norms > 0, w / norms.clamp_min(1e-300), torch.zeros_like(w))
    logits = sigma * (v @ v.T)
    eye = torch.eye(n, dtype=torch.bool)
    p = torch.softmax(logits.masked_fill(eye, -math.inf), dim=1)
    return (1.0 - self_weight) * p + self_weight * eye.to(torch.float64)


def cloud_models(models: torch.Tensor, *, sigma: float, self_weight: float) -> torch.Tensor:
    """Every client's cloud model ``u_i = sum_j xi_ij w_j`` (rows of ``xi @ models``).

    Args:
        models: ``[n, d]``, one flat model per row.
        sigma: See :func:`attention_weights`.
        self_weight: See :func:`attention_weights`.

    Returns:
        ``[n, d]`` in the dtype of ``models``.
    """
    xi = attention_weights(models, sigma=sigma, self_weight=self_weight)
    return (xi @ models.to(torch.float64)).to(models.dtype)


@dataclass(frozen=True, slots=True)
class SecureRoundCost:
    """What one secure FedAMP step cost (simulation: all parties in this process).

    Attributes:
        n_clients: Models combined.
        n_params: Parameters per model.
        seconds: Wall time of the secure computation (sharing to the reveals).
        rounds: Communication rounds between the aggregation parties (from ``sess.stats``).
        party_bytes: Bytes the aggregation parties sent each other in total.
        provider_bytes: Bytes smpc's crypto provider sent.
        upload_bytes_per_client: Shares each client sends (``8 * parties * (d + 1)``).
        download_bytes_per_client: Shares of ``u_i`` each client receives (``8 * parties * d``).
    """

    n_clients: int
    n_params: int
    seconds: float
    rounds: int
    party_bytes: int
    provider_bytes: int
    upload_bytes_per_client: int
    download_bytes_per_client: int


def secure_tolerance(
    frac_bits: int,
    *,
    sigma: float,
    self_weight: float,
    n_clients: int,
    max_abs: float,
    max_norm: float,
) -> float:
    """Bound on ``|secure - plaintext|`` per coordinate of a cloud model.

    Derivation, with ``e = 2^-f`` (``f = frac_bits``), for
    :func:`secure_cloud_models` against :func:`cloud_models`:

    - Each direction coordinate is rounded to the nearest ``e``; the rounding
      errors of a unit vector against another add up like a random walk of
      step ``e/2`` weighted by unit coordinates, so a cosine errs by at most
      ``3e`` plus the Gram's one-ulp truncation: ``4e`` (with overwhelming
      probability over the rounding; a worst case would be ``sqrt(d) e``).
    - A logit ``sigma cos`` then errs by ``dx = 4 sigma e + 2e``.
    - The softmax's Jacobian gives ``sum_j |dp_j| <= 2 dx``; smpc's
      approximations (exponential by 5 squarings of a degree-5 Taylor
      polynomial, Newton reciprocal) add a relative error of at most
      ``2^7 e`` per weight plus one ulp each: the row of attention weights
      errs by ``(1 - self_weight) (2 dx + 2^7 e + n e)`` in L1.
    - ``u_ik = sum_j xi_ij rho_j v_jk`` errs by that L1 error times
      ``max_abs`` (the largest model coordinate), plus the directions'
      rounding times the norms (``max_norm e / 2``) and two truncations (``2e``).

    Args:
        frac_bits: Fixed-point bits of the session.
        sigma: Attention scale.
        self_weight: ``xi_ii``.
        n_clients: Number of models combined.
        max_abs: Largest absolute coordinate of any model.
        max_norm: Largest L2 norm of any model.

    Returns:
        The per-coordinate bound (with a safety factor of 2).
    """
    e = 2.0**-frac_bits
    dx = 4 * sigma * e + 2 * e
    att_l1 = (1 - self_weight) * (2 * dx + 2**7 * e + n_clients * e)
    return 2 * (att_l1 * max_abs + max_norm * e / 2 + 2 * e)


def _embed_off_diagonal(p: Any, n: int) -> Any:
    """``[n, n-1]`` off-diagonal entries -> ``[n, n]`` with a zero diagonal (no communication)."""
    import smpc

    grid = p.reshape(n - 1, n)
    zero_col = grid[:, :1] * 0  # exact zero shares
    padded = smpc.cat([grid, zero_col], dim=1)  # [n-1, n+1]
    return smpc.cat([zero_col[:1, 0], padded.reshape(-1)], dim=0).reshape(n, n)


def cloud_models_on_shares(directions: Any, norms: Any, *, sigma: float, self_weight: float) -> Any:
    """Steps 2-4 of :func:`secure_cloud_models` on shares, in any smpc runtime.

    Uses only the public :class:`smpc.SharedTensor` API, so the same code runs
    with the parties simulated in one process or as separate processes
    (:func:`smpc.run`).

    Args:
        directions: Shared ``[n, d]`` unit directions ``w_i / ||w_i||`` (0 for a zero model).
        norms: Shared ``[n]`` norms ``||w_i||``.
        sigma: Attention scale.
        self_weight: ``xi_ii``.

    Returns:
        The shared ``[n, d]`` cloud models (row ``i`` is client ``i``'s ``u_i``).
    """
    _check_hyper(sigma, self_weight)
    n = directions.shape[0]
    if directions.dim() != 2 or tuple(norms.shape) != (n,):
        raise ConfigError(
            f"`directions` must be [n, d] and `norms` [n]; got {tuple(directions.shape)} "
            f"and {tuple(norms.shape)}"
        )
    if n == 1:
        return directions * norms.reshape(1, 1).expand(1, directions.shape[1])
    cos = directions @ directions.t()  # [n, n] cosine Gram matrix
    off = (cos * float(sigma)).reshape(-1)[1:].reshape(n - 1, n + 1)[:, :n]
    att = off.reshape(n, n - 1).softmax(dim=1)
    eye = torch.eye(n, dtype=torch.float64)
    xi = _embed_off_diagonal(att, n) * (1.0 - self_weight) + self_weight * eye
    return (xi * norms.reshape(1, n).expand(n, n)) @ directions


def secure_cloud_models(
    models: Mapping[int, torch.Tensor],
    *,
    sigma: float,
    self_weight: float,
    parties: int | Sequence[str] = 2,
    frac_bits: int = 20,
    seed: int | None = None,
) -> tuple[dict[int, torch.Tensor], SecureRoundCost]:
    """HeurFedAMP's cloud models computed on secret shares (in-process simulation).

    Protocol (``n`` clients, ``d`` parameters, aggregation parties = the
    ``smpc`` session's parties, e.g. two non-colluding servers, plus its
    crypto provider):
        1. Client ``i`` computes its norm ``rho_i = ||w_i||`` and direction
           ``v_i = w_i / rho_i`` locally and secret-shares both (``d + 1``
           values) to the parties. Normalising at the client keeps every
           shared value in [-1, 1] beside one norm, so no range assumption on
           ``||w||^2`` is needed (smpc's ``rsqrt`` covers [0.1, 100] only).
        2. Cosines: ``C = V V^T`` (one Beaver matmul, ``[n, d] x [d, n]``).
        3. Attention: ``P = softmax(sigma * offdiag(C))`` row-wise on the
           ``n - 1`` off-diagonal entries (smpc's max-shifted exponential and
           bounded reciprocal), ``xi = (1 - self_weight) P + self_weight I``.
        4. Cloud models: ``U = (xi * rho^T) V`` (one elementwise product of
           ``n^2`` values, one Beaver matmul ``[n, n] x [n, d]``).
        5. Row ``i`` of ``U`` is opened to client ``i`` only (each party sends
           it its share; simulated here by a reveal handed to that client).

    Security: semi-honest, non-colluding parties; a coalition of fewer than
    all parties sees uniformly random ring elements. The parties never see a
    model, a norm, a cosine or an attention weight; client ``i`` learns
    ``u_i`` (from which, with ``self_weight`` public, it learns the
    attention-weighted sum of the others' models, as in plaintext FedAMP).

    Cost: ``d + 1`` shared values (8 bytes each, per party) up per client,
    ``d`` down. Between the parties, ``O(n d)``: the Gram's Beaver matmul
    opens its two masked ``[n, d]`` operands, the cloud models' matmul one
    more ``[n, d]`` operand and the truncation of its ``[n, d]`` result, i.e.
    4 openings of ``n d`` ring elements (64 bytes per client-parameter with 2
    parties); the softmax costs ``O(n^2)``. Rounds are constant in ``n`` and
    ``d`` (33 measured with 20 clients). Measured: :class:`SecureRoundCost`,
    ``bench/bench_fedamp.py``.
    Accuracy: :func:`secure_tolerance` bounds the error per coordinate
    (about ``2^-f (16 sigma + 2^8 + 2n) max|w|``).

    Args:
        models: Client id -> flat model (the simulation stands in for the
            clients, which would each share their own).
        sigma: Attention scale.
        self_weight: ``xi_ii``.
        parties: The aggregation parties (count >= 2 or names).
        frac_bits: Fixed point of the session (20 keeps the directions'
            coordinates, about ``1/sqrt(d)``, to 4 significant digits at ``d = 10^5``;
            norms up to ``2^(31-f)`` = 2048).
        seed: smpc testing switch (reproducible shares); ``None`` in real runs.

    Returns:
        ``({client id: u_i}, cost)``.

    Raises:
        ConfigError: Bad models or hyperparameters.
        AggregationError: A model norm beyond the encoding's range.
    """
    import smpc

    if not models:
        raise ConfigError("`models` must hold at least one client model")
    ids = sorted(models)
    stacked = torch.stack([models[c].reshape(-1) for c in ids])
    _check_models(stacked)
    _check_hyper(sigma, self_weight)
    n, d = stacked.shape
    p_count = parties if isinstance(parties, int) else len(parties)
    w = stacked.to(torch.float64)
    rho = w.norm(dim=1)
    limit = 2.0 ** (31 - frac_bits)
    if float(rho.max()) >= limit:
        raise AggregationError(
            f"a client model has L2 norm {float(rho.max()):.4g}; frac_bits={frac_bits} "
            f"encodes values below {limit:g} (lower `frac_bits`)"
        )
    v = torch.where(rho[:, None] > 0, w / rho.clamp_min(1e-300)[:, None], torch.zeros_like(w))
    start = time.perf_counter()
    with smpc.Session(parties=parties, frac_bits=frac_bits, seed=seed) as sess:
        # 1. each client shares its direction and its norm (client side)
        dirs = [sess.share(v[k : k + 1]) for k in range(n)]
        norms = [sess.share(rho[k : k + 1]) for k in range(n)]
        share_stats = (sess.stats.rounds, sess.stats.bytes, sess.stats.dealer_bytes)
        u_shared = cloud_models_on_shares(
            smpc.cat(dirs, dim=0), smpc.cat(norms, dim=0), sigma=sigma, self_weight=self_weight
        )
        st = sess.stats
        rounds = st.rounds - share_stats[0]
        party_bytes = st.bytes - share_stats[1]
        provider_bytes = st.dealer_bytes - share_stats[2]
        # 5. row i to client i
        out: dict[int, torch.Tensor] = {}
        for k, cid in enumerate(ids):
            u = u_shared[k].reveal()
            assert u is not None  # simulation: every party's share is here
            out[cid] = u.reshape(models[cid].shape).to(models[cid].dtype)
    cost = SecureRoundCost(
        n_clients=n,
        n_params=d,
        seconds=time.perf_counter() - start,
        rounds=rounds,
        party_bytes=party_bytes,
        provider_bytes=provider_bytes,
        upload_bytes_per_client=8 * p_count * (d + 1),
        download_bytes_per_client=8 * p_count * d,
    )
    return out, cost


class FedAMP(FedAvg):
    """FedAMP (Huang et al., AAAI 2021), HeurFedAMP attention, optionally on secret shares.

    A personalised strategy: the :class:`fl.Server` keeps each client's own
    model (``Server.personal_models``) and cloud model
    (``Server.cloud_models``); each round the sampled clients train from
    their own model with the proximal term ``lam / (2 alpha_k) ||w - u_i||^2``
    toward their cloud model, upload it, and the server recomputes the cloud
    models of this round's clients (:meth:`personalize`). Evaluation is
    personalised: each client's own model on its ``Client.test_data``.

    The defaults (``self_weight=0.5, sigma=1000, lam=0.1, alpha_k=1``, so
    ``proximal_mu = 0.1``) were chosen on validation splits of the clients'
    training data (never their test splits) of the pathological MNIST and
    Fashion-MNIST benchmark (``bench/bench_fedamp.py --validation``): a pull
    of ``mu = 1`` toward the cloud model cost up to a point of accuracy
    there, while ``sigma`` (100 to 10,000) barely mattered. A later joint
    grid (``self_weight`` 0.3 to 0.7, ``mu`` 0.05 to 0.2 or decaying, per-layer or
    classifier-head cosines, a personal classifier head) on ten validation
    splits found no setting better than these defaults by more than one
    standard error on either data set, so they stay. Over fifty test splits of
    that benchmark FedAMP is 0.06 points above local-only training on MNIST
    and 0.18 points below it on Fashion-MNIST, the loss sitting on clients
    that hold two confusable garments; on all 70,000 Fashion-MNIST images, with
    14 times more local steps per round, it is 1.2 points below (0.4 with
    ``lam=0.01``): the proximal pull per round grows with the local steps, so
    ``lam`` should shrink as they grow (see the FedAMP docs page).

    Args:
        self_weight: ``xi_ii`` in [0, 1] (1 = local training only).
        sigma: Scale of the cosine similarity in the attention (>= 0).
        lam: The paper's ``lambda`` (> 0).
        alpha_k: The paper's server step ``alpha_k`` (> 0); ``proximal_mu = lam / alpha_k``.
        secure: Compute the cloud models on secret shares (:func:`secure_cloud_models`).
        parties: Aggregation parties of the secure computation.
        frac_bits: Fixed point of the secure computation.
        seed: smpc testing switch for reproducible shares; ``None`` in real runs.
        fraction_fit: As :class:`fl.FedAvg`.
        min_fit_clients: As :class:`fl.FedAvg`.
        epochs: As :class:`fl.FedAvg`.
        batch_size: As :class:`fl.FedAvg`.
        lr: As :class:`fl.FedAvg`.

    Attributes:
        last_cost: The :class:`SecureRoundCost` of the latest secure step (``None`` in plaintext).
    """

    def __init__(
        self,
        *,
        self_weight: float = 0.5,
        sigma: float = 1000.0,
        lam: float = 0.1,
        alpha_k: float = 1.0,
        secure: bool = False,
        parties: int | Sequence[str] = 2,
        frac_bits: int = 20,
        seed: int | None = None,
        fraction_fit: float = 1.0,
        min_fit_clients: int = 1,
        epochs: int = 1,
        batch_size: int = 32,
        lr: float = 0.05,
    ) -> None:
        super().__init__(
            fraction_fit=fraction_fit,
            min_fit_clients=min_fit_clients,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
        )
        _check_hyper(sigma, self_weight)
        for name, val in (("lam", lam), ("alpha_k", alpha_k)):
            if isinstance(val, bool) or not (
                isinstance(val, (int, float)) and val > 0 and math.isfinite(val)
            ):
                raise ConfigError(f"`{name}` must be a positive finite number; got {val!r}")
        n_parties = parties if isinstance(parties, int) else len(parties)
        if isinstance(n_parties, bool) or n_parties < 2:
            raise ConfigError(f"`parties` must be >= 2 (or name >= 2 parties); got {parties!r}")
        if not isinstance(frac_bits, int) or not 8 <= frac_bits <= 28:
            raise ConfigError(f"`frac_bits` must be an int in [8, 28]; got {frac_bits!r}")
        self.self_weight = float(self_weight)
        self.sigma = float(sigma)
        self.lam = float(lam)
        self.alpha_k = float(alpha_k)
        self.secure = bool(secure)
        self.parties: int | tuple[str, ...] = (
            parties if isinstance(parties, int) else tuple(parties)
        )
        self.n_parties = n_parties
        self.frac_bits = frac_bits
        self.seed = seed
        self.last_cost: SecureRoundCost | None = None
        self.config = FitConfig(
            epochs=epochs, batch_size=batch_size, lr=lr, proximal_mu=self.lam / self.alpha_k
        )

    def __repr__(self) -> str:
        return (
            f"FedAMP(self_weight={self.self_weight}, sigma={self.sigma}, lam={self.lam}, "
            f"alpha_k={self.alpha_k}, secure={self.secure}, fraction_fit={self.fraction_fit}, "
            f"{self.config})"
        )

    def apply(self, global_vector: torch.Tensor, mean_delta: torch.Tensor) -> torch.Tensor:
        """FedAMP has no global model: the server's vector stays the initial one."""
        return global_vector

    def personalize(self, models: Mapping[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """The cloud model of every client in ``models`` (this round's uploads).

        Args:
            models: Client id -> the client's flat model after local training.

        Returns:
            Client id -> ``u_i``, in plaintext (:func:`cloud_models`) or on
            shares (:func:`secure_cloud_models`, cost in :attr:`last_cost`).
        """
        if not models:
            raise ConfigError("`models` must hold at least one client model")
        if self.secure:
            out, self.last_cost = secure_cloud_models(
                models,
                sigma=self.sigma,
                self_weight=self.self_weight,
                parties=self.parties,
                frac_bits=self.frac_bits,
                seed=self.seed,
            )
            return out
        ids = sorted(models)
        stacked = torch.stack([models[c].reshape(-1) for c in ids])
        u = cloud_models(stacked, sigma=self.sigma, self_weight=self.self_weight)
        return {c: u[k].reshape(models[c].shape).clone() for k, c in enumerate(ids)}

    def upload_bytes(self, n_params: int) -> int:
        """Bytes one client uploads per round (float32 model, or its shares)."""
        return 8 * self.n_parties * (n_params + 1) if self.secure else 4 * n_params
