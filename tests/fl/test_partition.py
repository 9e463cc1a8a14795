"""fl.partition: invariants (hypothesis), determinism, shards and Dirichlet skew."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import fl


@st.composite
def labelled(draw: st.DrawFn) -> tuple[torch.Tensor, int]:
    n_classes = draw(st.integers(1, 6))
    n = draw(st.integers(20, 200))
    seed = draw(st.integers(0, 1000))
    labels = torch.randint(n_classes, (n,), generator=torch.Generator().manual_seed(seed))
    return labels, draw(st.integers(1, 10))


@given(labelled(), st.sampled_from(["iid", "shards", "dirichlet"]), st.integers(0, 5))
def test_partition_is_a_disjoint_cover(
    data: tuple[torch.Tensor, int], scheme: str, seed: int
) -> None:
    labels, n_clients = data
    kw = {"min_size": 0} if scheme == "dirichlet" else {}
    p = fl.partition(labels, n_clients, scheme, seed=seed, **kw)
    allidx = torch.cat(list(p.indices))
    assert len(p) == n_clients
    assert torch.equal(allidx.sort().values, torch.arange(labels.numel()))
    assert int(p.histogram().sum()) == labels.numel()
    again = fl.partition(labels, n_clients, scheme, seed=seed, **kw)
    assert all(torch.equal(a, b) for a, b in zip(p.indices, again.indices, strict=True))


def test_iid_sizes_are_balanced() -> None:
    p = fl.partition(torch.arange(103) % 10, 10, "iid")
    assert max(p.sizes) - min(p.sizes) <= 1


def test_shards_gives_k_classes_per_client() -> None:
    labels = torch.arange(4000) // 400  # sorted, 10 balanced classes
    for k in (1, 2, 5):  # shards aligned with class boundaries: exactly k classes
        p = fl.partition(labels, 10, "shards", classes_per_client=k, seed=1)
        classes = (p.histogram() > 0).sum(dim=1)
        assert classes.tolist() == [k] * 10
    p = fl.partition(labels, 10, "shards", classes_per_client=3, seed=1)  # straddling shards
    assert int((p.histogram() > 0).sum(dim=1).max()) <= 6


def test_dirichlet_skew_grows_as_alpha_falls() -> None:
    labels = torch.arange(2000) % 10

    def skew(alpha: float) -> float:
        h = fl.partition(labels, 10, "dirichlet", alpha=alpha, seed=0).histogram().float()
        frac = h / h.sum(dim=1, keepdim=True)
        return float(frac.max(dim=1).values.mean())

    assert skew(0.1) > skew(100.0)
    assert skew(100.0) < 0.2


def test_summary_subsets_and_plot(tmp_path: Path) -> None:
    x = torch.randn(50, 3)
    y = torch.arange(50) % 5
    p = fl.partition((x, y), 4, "shards", seed=0)
    text = p.summary()
    assert "client" in text and len(text.splitlines()) == 2 + 4
    subsets = p.subsets(x, y)
    assert sum(s[0].shape[0] for s in subsets) == 50
    assert p.plot(tmp_path / "p.png").stat().st_size > 1000


def test_partition_errors() -> None:
    y = torch.arange(10)
    with pytest.raises(fl.ConfigError, match="scheme"):
        fl.partition(y, 2, "random")
    with pytest.raises(fl.ConfigError, match="n_clients"):
        fl.partition(y, 11)
    with pytest.raises(fl.ConfigError, match="alpha"):
        fl.partition(y, 2, "dirichlet", alpha=0)
    with pytest.raises(fl.ConfigError, match="labels"):
        fl.partition(torch.rand(10), 2)
