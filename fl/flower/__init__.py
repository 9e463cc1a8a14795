"""``fl``'s secure aggregation and DP on Flower's engine: a server workflow and a client mod.

Top layer (``fl``), optional: needs the ``flower`` extra
(``pip install 'smpc-fl[flower]'``, which pins ``flwr[simulation]==1.41.0``).
Importing :mod:`fl` never imports Flower; importing this package does.

A Flower ``ServerApp`` gets :class:`~fl.MaskingAggregator`,
:class:`~fl.SecretSharingAggregator` (or the plain reference) under any
:mod:`fl.strategy` by calling a :class:`SecureAggregation`
workflow from its ``main``; the ``ClientApp`` adds :func:`secure_aggregation_mod`
to its mods and keeps its usual ``@app.train()`` function::

    workflow = SecureAggregation(fl.MaskingAggregator(), fl.FedAvg(), num_rounds=3)

    @server_app.main()
    def main(grid, context):
        arrays, history = workflow(grid, ArrayRecord(model.state_dict()))

    client_app = ClientApp(mods=[secure_aggregation_mod])

Protocol (one Flower round; every arrow is one ``grid.send_and_receive`` with a
timeout; a node whose reply carries an error, fails to decode or does not
arrive in time is a dropout of that stage, exactly as in the in-process
simulation of :class:`~fl.MaskingAggregator`):

    0. ``ADVERTISE_KEYS`` + training: the server sends the global model
       (``ArrayRecord "arrays"``), the strategy's fit configuration
       (``ConfigRecord "config"``) and the round setup (``ConfigRecord
       "fl.secagg"``). The mod calls the user's training (the only stage that
       does), keeps ``delta = trained - global`` in ``context.state``, makes the
       two X25519 key pairs and replies with the public keys and the sample
       count (public metadata, as in FedAvg). The server derives the weights
       from the counts of the nodes that answered.
    1. ``SHARE_KEYS``, 2. ``INPUT`` (which also carries the node's weight; the
       masked vector travels as an ``ArrayRecord`` of ``bits/8`` bytes per
       parameter), 3. ``UNMASK``: the stages of :mod:`fl.secure_aggregation`,
       computed by its :class:`~fl.secure_aggregation.MaskingServer` and
       :class:`~fl.secure_aggregation.MaskingClient`. Between messages the
       client's protocol state (keys, held shares, the update) lives in
       ``context.state`` as a ``ConfigRecord`` and an ``ArrayRecord``, and is
       erased when the round ends.

    With :class:`~fl.PlainAggregator` the round is stage 0 (training, sample
    count) and one ``INPUT`` stage carrying ``w_i * delta_i`` in float32.

    With :class:`~fl.SecretSharingAggregator` (``P = parties`` aggregation
    parties, which are ``P`` of the round's own SuperNodes) the round has
    three exchanges:

    0. ``ss_train``: training, as above; every node also makes an X25519 key
       pair (its ``sk`` stays in ``context.state``) and replies with the public
       key and its sample count. The server picks ``P`` parties among the nodes
       that answered (public randomness).
    1. ``ss_input``: the server sends each node its weight ``w_i``,
       ``frac_bits`` and the parties' ids and public keys. The node encodes
       ``x_i = w_i * delta_i`` in fixed point (``smpc``'s encoding: the
       in-process aggregator's values exactly) in Z_2^64 and splits it into
       ``P`` additive shares: a fresh 16-byte seed for each of parties
       ``0..P-2`` (their share is ``AES-CTR(seed)``) and the explicit share
       ``x_i - sum_j AES-CTR(seed_j)`` for party ``P-1``. Each share is
       encrypted to its party with AES-GCM under a key derived from an
       ephemeral X25519 exchange with the party's key, bound to the round,
       sender and party (associated data). The reply holds the ciphertexts
       only.
    2. ``ss_sum``: the server relays to each party the ciphertexts addressed
       to it from the nodes whose shares arrived (the survivors ``S``); the
       party decrypts, adds its shares mod 2^64 and returns the sum. The
       server adds the ``P`` sums, decodes, and divides by the survivors'
       total weight (:meth:`~fl.Aggregator.finalize`, which adds the central
       DP noise when configured).

    Dropouts: a node that fails in stage 0 or 1 is left out (stage 1: still
    weighted, as in the in-process aggregator); a party that fails its own
    input still serves as a party. A party that does not return its sum
    fails the round (additive shares have no threshold): too few parties is
    :class:`~fl.InsufficientClientsError` naming stage ``sum``.

Masking in two exchanges (``reuse_keys=True``, :class:`~fl.MaskingAggregator`):
    Every node keeps two long-term X25519 key pairs (``c``, ``s``) in
    ``context.state`` across rounds (the private halves never leave it), and
    the DH secrets with each peer's long-term keys beside them, computed once.
    The first round (and any round after a node failed in ``fast_train``,
    which may have lost its keys) takes three exchanges: ``fast_keys`` (the
    node trains, keeps its update and replies with its long-term public keys
    ``c_pk``, ``s_pk`` and its sample count; the server weighs the nodes that
    answered by those counts), ``fast_input`` (stage 0 below without the
    training) and ``fast_unmask``. While every selected node's keys and
    sample count are known, a round takes two exchanges:

    0. ``fast_train``: the server sends the model, the round setup (a fresh
       random ``round_id``, neighbours, threshold ``t``, the node's weight
       from the sample counts of its previous round) and the neighbours'
       long-term keys. The node trains, draws a fresh 256-bit self-mask seed
       ``b_u``, Shamir-shares it ``t``-of-holders and encrypts each share to
       its holder under ``KDF(DH(c_sk_u, c_pk_v), round_id)``, and replies
       with the shares and ``y_u = x_u + PRG(b_u) + sum_v +-PRG(s_uv)`` over
       *all* its neighbours, ``s_uv = KDF(DH(s_sk_u, s_pk_v), round_id)``.
       ``U2`` = the nodes that answered; need ``|U2| >= t``. A node that
       fails here is weighted but not summed (the in-process aggregator's
       dropout at ``INPUT``).
    1. ``fast_unmask``: the server routes the shares and announces ``U2``
       and ``D`` (the others). Each node returns its shares of ``b_u`` for
       ``u in U2`` and, for each neighbour ``w in D``, the round's pair key
       ``s_uw`` (a per-round KDF output; the long-term secret never leaves
       the node). The server removes the self masks and the dropped pairs'
       masks. With ``D`` empty any ``t`` replies rebuild every self mask, so
       the server stops reading at the ``t``-th.

    What changes: the Shamir shares of ``s_sk`` (and the ``share_keys``
    exchange) are gone, because ``s_sk`` is never rebuilt; a dropped node's
    pair masks are removed with the keys its live neighbours hand over. So a
    node in ``U2`` that fails at ``fast_unmask`` while a neighbour of it is in
    ``D`` ends the round (an :class:`~fl.AggregationError` naming it; the
    four-stage protocol survives that case). Late inputs stay hidden: a
    dropped node's self-mask seed was never delivered to anyone. The
    security model is the four-stage protocol's (semi-honest; the server and
    fewer than ``t`` colluding holders learn only the sum of ``U2``).

    The server applies the mean update with the strategy
    (``strategy.apply(global, mean_delta)``), records a
    :class:`~fl.RoundResult` and, when too few nodes survive a stage, raises
    :class:`~fl.InsufficientClientsError` naming the stage or (with
    ``on_failure="record"``) keeps the model and records a failed round.

Cost:
    Four request/reply exchanges per round with masking (Flower's SecAgg+
    takes four too), two with ``reuse_keys=True`` after the first round,
    three with secret sharing, two with the plain aggregator. Upload per
    node: the masked vector (``bits/8`` bytes per parameter plus the ``.npy``
    header of Flower's ``Array``) and ``~ 64 + 262 k`` bytes of keys and
    encrypted shares for ``k`` neighbours (``~ 82 k`` with reused keys; see
    :mod:`fl.secure_aggregation`); with secret sharing 8 bytes per parameter
    (one Z_2^64 share) plus ``32 + 32 (P - 1) + 16`` bytes, and each party
    uploads its sum (8 bytes per parameter) once more.

Security:
    That of :class:`~fl.MaskingAggregator` (semi-honest server and clients,
    Bonawitz et al. CCS 2017 with the SecAgg+ graphs of Bell et al. CCS 2020):
    Flower's SuperLink routes opaque AES-GCM ciphertexts and masked vectors and
    learns the sum of the survivors' updates only. With secret sharing: that
    of :class:`~fl.SecretSharingAggregator` (semi-honest; the server and any
    ``P - 1`` colluding parties learn only the sum; all ``P`` parties with the
    server learn every update); the server sees ciphertexts and the parties'
    sums (uniformly random but for their total); a relayed ciphertext that was
    changed fails AES-GCM authentication at the party. Every field is decoded by
    type (bytes, ints, floats, ``numpy`` arrays loaded without pickle); nothing
    is unpickled.

Modules (one part of the protocol each):
    :mod:`fl.flower.workflow`: :class:`SecureAggregation`, the server side of
    every stage. :mod:`fl.flower.mod`: :func:`secure_aggregation_mod`, the
    node side of the plain and four-stage masking rounds, which routes the
    other stages. :mod:`fl.flower.training`: stage 0 on a node (the user's
    training, the update kept in ``context.state``).
    :mod:`fl.flower.secret_sharing`: the ``ss_*`` stages on a node.
    :mod:`fl.flower.reuse_keys`: the long-term keys and the ``fast_*`` stages
    on a node. :mod:`fl.flower.records`: the wire format (records and codecs),
    :func:`flatten_arrays`/:func:`unflatten_arrays` and the node state kept in
    ``context.state``.
"""

from __future__ import annotations

try:
    from flwr import app as _flwr_app  # noqa: F401 - every submodule imports flwr.app
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "fl.flower needs Flower: install the `flower` extra "
        "(pip install 'smpc-fl[flower]', i.e. flwr[simulation]==1.41.0)"
    ) from exc

from fl.flower.mod import secure_aggregation_mod
from fl.flower.records import FAST_INPUT as FAST_INPUT
from fl.flower.records import FAST_KEYS as FAST_KEYS
from fl.flower.records import FAST_TRAIN as FAST_TRAIN
from fl.flower.records import FAST_UNMASK as FAST_UNMASK
from fl.flower.records import RECORD as RECORD
from fl.flower.records import SS_INPUT as SS_INPUT
from fl.flower.records import SS_SUM as SS_SUM
from fl.flower.records import SS_TRAIN as SS_TRAIN
from fl.flower.records import flatten_arrays, unflatten_arrays
from fl.flower.workflow import SecureAggregation

__all__ = ["SecureAggregation", "flatten_arrays", "secure_aggregation_mod", "unflatten_arrays"]
