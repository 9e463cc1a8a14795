"""fl.partition: invariants (hypothesis), determinism, shards and Dirichlet skew."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

import fl
from fl.partition import as_tensors


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


def test_counts_must_be_ints_and_the_dataset_non_empty() -> None:
    y = torch.arange(10) % 3
    for bad in (2.5, True, "2", 0, -1):
        with pytest.raises(fl.ConfigError, match="`n_clients` must be an int"):
            fl.partition(y, bad)  # type: ignore[arg-type]
    assert len(fl.partition(y, np.int64(3))) == 3
    with pytest.raises(fl.ConfigError, match="classes_per_client"):
        fl.partition(y, 2, "shards", classes_per_client=1.5)  # type: ignore[arg-type]
    with pytest.raises(fl.ConfigError, match="min_size"):
        fl.partition(y, 2, "dirichlet", min_size=0.5)  # type: ignore[arg-type]
    for empty in (torch.zeros(0, dtype=torch.long), (torch.zeros(0, 3), torch.zeros(0))):
        with pytest.raises(fl.ConfigError, match="empty"):
            fl.partition(empty, 1)


class _Pairs(Dataset[tuple[torch.Tensor, int]]):
    """A plain map-style dataset (no .targets, no .tensors)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.x[i] * 2.0, int(self.y[i])  # a "transform": doubled features


@st.composite
def torch_datasets(draw: st.DrawFn) -> tuple[object, torch.Tensor, torch.Tensor]:
    """A torch data container and the (features, labels) it holds."""
    n = draw(st.integers(4, 40))
    seed = draw(st.integers(0, 1000))
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 3, generator=g), torch.randint(4, (n,), generator=g)
    kind = draw(st.sampled_from(["tensor", "pairs", "subset", "subset-pairs", "loader"]))
    if kind == "tensor":
        return TensorDataset(x, y), x, y
    if kind == "pairs":
        return _Pairs(x, y), 2.0 * x, y
    idx = draw(st.lists(st.integers(0, n - 1), min_size=2, max_size=n, unique=True))
    if kind == "subset":
        return Subset(TensorDataset(x, y), idx), x[idx], y[idx]
    if kind == "subset-pairs":
        return Subset(_Pairs(x, y), idx), 2.0 * x[idx], y[idx]
    return DataLoader(_Pairs(x, y), batch_size=3, shuffle=True), 2.0 * x, y


@given(torch_datasets(), st.integers(1, 2), st.integers(0, 5))
def test_torch_data_containers_work_everywhere(
    data: tuple[object, torch.Tensor, torch.Tensor], n_clients: int, seed: int
) -> None:
    dataset, x, y = data
    p = fl.partition(dataset, n_clients, seed=seed)
    ref = fl.partition(y, n_clients, seed=seed)
    assert all(torch.equal(a, b) for a, b in zip(p.indices, ref.indices, strict=True))
    fx, fy = as_tensors(dataset)
    assert torch.equal(fx, x) and torch.equal(fy, y)
    clients = fl.make_clients(p, dataset)
    for c, ix in zip(clients, p.indices, strict=True):
        assert torch.equal(c.features, x[ix]) and torch.equal(c.labels, y[ix])
    single = fl.Client(0, dataset)
    assert single.num_examples == y.numel() and torch.equal(single.features, x)


def test_unsupported_containers_are_named() -> None:
    with pytest.raises(fl.ConfigError, match="got dict"):
        fl.partition({"x": 1}, 2)  # type: ignore[arg-type]
    with pytest.raises(fl.ConfigError, match="client 3's data"):
        fl.Client(3, {"x": 1})  # type: ignore[arg-type]
    with pytest.raises(fl.ConfigError, match="labels"):
        fl.Client(0, TensorDataset(torch.zeros(2, 1), torch.zeros(2)), torch.zeros(2))
    with pytest.raises(fl.ConfigError, match="labels"):
        fl.Client(0, torch.zeros(2, 1))
    with pytest.raises(fl.ConfigError, match="empty"):
        fl.Client(0, TensorDataset(torch.zeros(0, 1), torch.zeros(0)))


# ------------------------------------------------------------- natural partitions
@st.composite
def owned(draw: st.DrawFn) -> tuple[torch.Tensor, list[int] | list[str]]:
    n = draw(st.integers(1, 120))
    n_owners = draw(st.integers(1, min(n, 15)))
    ids = draw(st.lists(st.integers(0, n_owners - 1), min_size=n, max_size=n))
    if draw(st.booleans()):
        return torch.arange(n) % 3, [f"writer-{i}" for i in ids]
    return torch.arange(n) % 3, [7 * i - 20 for i in ids]  # negative ids are fine


@given(owned(), st.sampled_from(["list", "tensor", "numpy"]))
def test_natural_gives_one_client_per_owner(
    data: tuple[torch.Tensor, list[int] | list[str]], form: str
) -> None:
    labels, ids = data
    groups: object = ids
    if form == "tensor" and isinstance(ids[0], int):
        groups = torch.tensor(ids)
    elif form == "numpy":
        groups = np.asarray(ids)
    p = fl.partition(labels, scheme="natural", groups=groups)
    distinct = sorted(set(ids))
    assert len(p) == len(distinct) and p.scheme is fl.Scheme.NATURAL
    assert [o for (o,) in p.owners] == distinct  # sorted owner order, one owner per client
    assert torch.equal(torch.cat(list(p.indices)).sort().values, torch.arange(labels.numel()))
    for (owner,), ix in zip(p.owners, p.indices, strict=True):
        assert ix.tolist() == [i for i, o in enumerate(ids) if o == owner]


@given(owned(), st.integers(1, 15), st.integers(0, 3))
def test_natural_into_n_clients_keeps_each_owner_whole(
    data: tuple[torch.Tensor, list[int] | list[str]], k: int, seed: int
) -> None:
    labels, ids = data
    distinct = sorted(set(ids))
    k = min(k, len(distinct))
    p = fl.partition(labels, k, "natural", groups=ids, seed=seed)
    assert len(p) == k
    assert sorted(o for group in p.owners for o in group) == distinct  # each owner once
    sizes = [len(group) for group in p.owners]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1  # ids dealt evenly
    for group, ix in zip(p.owners, p.indices, strict=True):
        assert ix.tolist() == [i for i, o in enumerate(ids) if o in set(group)]
    again = fl.partition(labels, k, "natural", groups=ids, seed=seed)
    assert again.owners == p.owners


def test_natural_makes_clients_per_hospital() -> None:
    x = torch.randn(6, 2)
    y = torch.tensor([0, 1, 1, 0, 1, 0])
    hospitals = ["north", "south", "north", "east", "south", "north"]
    p = fl.partition((x, y), scheme="natural", groups=hospitals)
    assert p.owners == (("east",), ("north",), ("south",)) and p.sizes == [1, 3, 2]
    clients = fl.make_clients(p, x, y)
    assert torch.equal(clients[1].features, x[[0, 2, 5]])


def test_natural_errors_are_clear() -> None:
    y = torch.zeros(4, dtype=torch.long)
    with pytest.raises(fl.ConfigError, match="needs `groups`"):
        fl.partition(y, scheme="natural")
    with pytest.raises(fl.ConfigError, match=r"one owner id per sample \(4\); got 3"):
        fl.partition(y, scheme="natural", groups=[1, 2, 3])
    with pytest.raises(fl.ConfigError, match="must be 1-D"):
        fl.partition(y, scheme="natural", groups=torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(fl.ConfigError, match="integer or string"):
        fl.partition(y, scheme="natural", groups=torch.tensor([0.5, 1.0, 1.0, 2.0]))
    with pytest.raises(fl.ConfigError, match="integer or string"):
        fl.partition(y, scheme="natural", groups=[0.5, 1.0, 1.0, 2.0])
    with pytest.raises(fl.ConfigError, match="one type"):
        fl.partition(y, scheme="natural", groups=[1, "1", 2, 2])
    with pytest.raises(fl.ConfigError, match="sequence of per-sample owner ids"):
        fl.partition(y, scheme="natural", groups=5)
    with pytest.raises(
        fl.ConfigError,
        match=r"<= the number of distinct owner ids \(2\) for scheme .natural.; got 3",
    ):
        fl.partition(y, 3, "natural", groups=[0, 0, 1, 1])
    with pytest.raises(fl.ConfigError, match="only used by scheme 'natural'"):
        fl.partition(y, 2, "iid", groups=[0, 0, 1, 1])
    with pytest.raises(fl.ConfigError, match="`n_clients` is required"):
        fl.partition(y, scheme="iid")
    with pytest.raises(fl.ConfigError, match="`n_clients` must be an int"):
        fl.partition(y, 2.5, "iid")  # type: ignore[arg-type]
