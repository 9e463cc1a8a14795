"""Vertical partitions: the column split, the secret-shared join, training against plaintext."""

from __future__ import annotations

import functools
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fl
import smpc
from fl.vertical import FeatureScheme, centralised_training

FRAC = 16


# -------------------------------------------------------------- the split
@st.composite
def split_cases(draw: st.DrawFn) -> tuple[torch.Tensor, int, str, int, list[int] | None, int]:
    nd = draw(st.integers(2, 4))
    shape = [draw(st.integers(1, 4))] + [draw(st.integers(1, 6)) for _ in range(nd - 1)]
    axis = draw(st.sampled_from([a for a in range(-nd + 1, nd) if a % nd != 0]))
    n_features = draw(st.integers(2, 12))
    shape[axis] = n_features
    n_parties = draw(st.integers(2, min(5, n_features)))
    sizes = None
    if draw(st.booleans()):
        cuts = sorted(
            draw(
                st.sets(
                    st.integers(1, n_features - 1), min_size=n_parties - 1, max_size=n_parties - 1
                )
            )
        )
        bounds = [0, *cuts, n_features]
        sizes = [b - a for a, b in zip(bounds, bounds[1:], strict=False)]
    scheme = draw(st.sampled_from(["contiguous", "random"]))
    seed = draw(st.integers(0, 1000))
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    return x, n_parties, scheme, axis, sizes, seed


@settings(max_examples=40)
@given(split_cases())
def test_partition_features_splits_and_joins_exactly(
    case: tuple[torch.Tensor, int, str, int, list[int] | None, int],
) -> None:
    x, n_parties, scheme, axis, sizes, seed = case
    part = fl.partition_features(x, n_parties, scheme, sizes=sizes, axis=axis, seed=seed)
    n_features = x.shape[axis]
    # Disjoint, sorted, covering columns of the requested sizes.
    assert len(part) == n_parties and part.n_features == n_features
    assert torch.equal(torch.sort(part.order).values, torch.arange(n_features))
    assert all(torch.equal(c, torch.sort(c).values) for c in part.columns)
    if sizes is not None:
        assert part.sizes == sizes
    else:
        assert max(part.sizes) - min(part.sizes) <= 1
    if scheme == "contiguous":
        assert torch.equal(part.order, torch.arange(n_features))
    # Each party gets exactly its columns; the join restores the data.
    pieces = part.split(x)
    for piece, cols in zip(pieces, part.columns, strict=True):
        assert piece.shape[axis] == cols.numel()
        assert torch.equal(piece, x.index_select(axis % x.dim(), cols))
    assert torch.equal(part.join(pieces), x)
    # Same seed, same split; the count alone gives the same split as the data.
    again = fl.partition_features(n_features, n_parties, scheme, sizes=sizes, axis=axis, seed=seed)
    assert all(torch.equal(a, b) for a, b in zip(part.columns, again.columns, strict=True))


def test_mnist_halves_layout() -> None:
    images = torch.arange(2 * 28 * 28, dtype=torch.float32).reshape(2, 1, 28, 28)
    part = fl.partition_features(images, 2)
    left, right = part.split(images)
    assert part.scheme is FeatureScheme.CONTIGUOUS
    assert torch.equal(left, images[..., :14]) and torch.equal(right, images[..., 14:])


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((torch.zeros(4, 6), 1), {}, "`n_parties` must be an int >= 2; got 1"),
        ((torch.zeros(4, 6), 7), {}, "`n_parties` must be <= the number of columns 6; got 7"),
        ((torch.zeros(4, 6), 2), {"sizes": [2, 3]}, "`sizes` must be 2 positive ints summing to 6"),
        ((torch.zeros(4, 6), 2), {"sizes": [0, 6]}, "`sizes` must be 2 positive ints"),
        ((torch.zeros(4, 6), 2), {"axis": 0}, "`axis` must not be 0"),
        ((torch.zeros(6), 2), {}, "sample axis and a feature axis"),
        ((torch.zeros(4, 6), 2, "rows"), {}, "`scheme` must be one of"),
        (("six", 2), {}, "`features` must be a torch.Tensor or a column count"),
    ],
)
def test_partition_features_rejects_bad_arguments(
    args: tuple[Any, ...], kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(fl.ConfigError, match=match):
        fl.partition_features(*args, **kwargs)


def test_split_and_join_check_shapes() -> None:
    part = fl.partition_features(6, 2, axis=1)
    with pytest.raises(fl.ConfigError, match="must have 6 columns along axis 1; got shape"):
        part.split(torch.zeros(3, 5))
    with pytest.raises(fl.ConfigError, match="`parts` must hold 2 tensors; got 1"):
        part.join([torch.zeros(3, 3)])


# ---------------------------------------------------- the shared join
@settings(max_examples=8)
@given(split_cases(), st.integers(2, 3))
def test_shared_join_equals_plaintext_join(
    case: tuple[torch.Tensor, int, str, int, list[int] | None, int], world: int
) -> None:
    x, n_parties, scheme, axis, sizes, seed = case
    part = fl.partition_features(x, n_parties, scheme, sizes=sizes, axis=axis, seed=seed)
    owners = [i % world for i in range(n_parties)]
    with smpc.Session(parties=world, frac_bits=FRAC) as sess:
        joined = fl.share_features(part.split(x), sess, owners=owners, partition=part)
        got = joined.reveal()
    torch.testing.assert_close(got, x, atol=2.0 ** -(FRAC + 1), rtol=0)


def test_share_features_checks_its_inputs() -> None:
    x = torch.randn(5, 6)
    part = fl.partition_features(x, 2, axis=1)
    with smpc.Session(parties=("alice", "bob")) as sess:
        with pytest.raises(fl.ConfigError, match="same \\(non-zero\\) length; got 2 and 1"):
            fl.share_features(part.split(x), sess, owners=["alice"], partition=part)
        with pytest.raises(fl.ConfigError, match="party 'bob' must be a torch.Tensor"):
            fl.share_features([x[:, :3], None], sess, owners=["alice", "bob"], partition=part)
        with pytest.raises(fl.ConfigError, match="same samples; got row counts \\[4, 5\\]"):
            fl.share_features([x[:4, :3], x[:, 3:]], sess, owners=["alice", "bob"])
        with pytest.raises(fl.ConfigError, match="must have \\[3, 3\\] columns"):
            fl.share_features([x[:, :2], x[:, 2:]], sess, owners=[0, 1], partition=part)


# ----------------------------------------------------------- training
def _task(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, fl.FeaturePartition]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(96, 7, generator=g)
    y = (x @ torch.randn(7, 3, generator=g)).argmax(dim=1)
    return x, y, fl.partition_features(x, 2, "random", sizes=[3, 4], axis=1, seed=seed)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(7, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))


KW: dict[str, Any] = {
    "epochs": 2,
    "batch_size": 16,
    "lr": 0.1,
    "momentum": 0.9,
    "lr_decay": True,
    "seed": 1,
}


def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def test_vertical_training_matches_centralised_training() -> None:
    x, y, part = _task()
    ref = centralised_training(_model(), x, y, **KW)
    with smpc.Session(parties=("alice", "bob"), frac_bits=FRAC) as sess:
        model, report = fl.vertical_training(
            _model(),
            part.split(x),
            y,
            sess,
            owners=["alice", "bob"],
            label_owner="alice",
            partition=part,
            log_every=3,
            **KW,
        )
    assert report.steps == 12 and len(report.losses) == 4 and report.bytes > 0
    want = torch.nn.utils.parameters_to_vector(ref.parameters()).detach()
    got = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    # 12 SGD steps on fixed point (2^-16) with the approximate softmax: measured 2e-4
    # (the weights themselves move by up to 0.45).
    assert float((got - want).abs().max()) < 5e-3
    assert abs(_accuracy(model, x, y) - _accuracy(ref, x, y)) <= 2 / len(y)


def test_vertical_training_mse_and_argument_checks() -> None:
    x, y, part = _task(1)
    targets = torch.nn.functional.one_hot(y, 3).float()
    kw = {**KW, "epochs": 1, "loss": "mse", "momentum": 0.0}
    ref = centralised_training(_model(), x, targets, **kw)
    with smpc.Session(parties=3, frac_bits=FRAC) as sess:
        model, _ = fl.vertical_training(
            _model(),
            part.split(x),
            targets,
            sess,
            owners=[1, 2],
            label_owner=1,
            model_owner=0,
            partition=part,
            **kw,
        )
        with pytest.raises(fl.ConfigError, match="`targets` must be a torch.Tensor"):
            fl.vertical_training(
                _model(), part.split(x), None, sess, owners=[0, 1], label_owner=0, partition=part
            )
        with pytest.raises(fl.ConfigError, match="one row per sample; got 95 for 96"):
            fl.vertical_training(
                _model(), part.split(x), y[1:], sess, owners=[0, 1], label_owner=0, partition=part
            )
        with pytest.raises(fl.ConfigError, match="`loss` must be"):
            fl.vertical_training(
                _model(), part.split(x), y, sess, owners=[0, 1], label_owner=0, loss="hinge"
            )
    want = torch.nn.utils.parameters_to_vector(ref.parameters()).detach()
    got = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    assert float((got - want).abs().max()) < 2e-3  # measured 5e-5; the weights move by 0.12


# --------------------------------------------------- distributed runtime
def vertical_program(
    sess: smpc.Session, x: torch.Tensor, y: torch.Tensor, part: fl.FeaturePartition
) -> dict[str, Any]:
    """Each party process passes only its own columns (and the labels on party 0)."""
    mine = [p if sess.rank == i else None for i, p in enumerate(part.split(x))]
    joined = fl.share_features(mine, sess, owners=[0, 1], partition=part).reveal()
    model, report = fl.vertical_training(
        _model(),
        mine,
        y if sess.rank == 0 else None,
        sess,
        owners=[0, 1],
        label_owner=0,
        partition=part,
        num_classes=3,
        **{**KW, "epochs": 1},
    )
    return {"joined": joined, "state": model.state_dict(), "steps": report.steps}


@pytest.mark.distributed
@pytest.mark.timeout(120)
def test_vertical_training_in_one_process_per_party() -> None:
    x, y, part = _task(2)
    ref = centralised_training(_model(), x, y, **{**KW, "epochs": 1})
    results = smpc.run(
        functools.partial(vertical_program, x=x, y=y, part=part), parties=2, timeout=60
    )
    want = torch.nn.utils.parameters_to_vector(ref.parameters()).detach()
    for res in results:
        torch.testing.assert_close(res["joined"], x, atol=2.0 ** -(FRAC + 1), rtol=0)
        assert res["steps"] == 6
        model = _model()
        model.load_state_dict(res["state"])
        got = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
        assert float((got - want).abs().max()) < 5e-3
