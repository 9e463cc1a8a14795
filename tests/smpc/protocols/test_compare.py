"""Tests of the ring-level comparison protocol (exact) and its cost."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import smpc
from smpc import ring
from smpc.protocols import compare, convert
from smpc.protocols import nonlinear as ring_nl
from smpc.sharing import additive_shares

from ...strategies import party_counts

_EDGES = [0, 1, -1, 2, -2, (1 << 62), -(1 << 62), (1 << 63) - 1, -(1 << 63), (1 << 47), -(1 << 47)]


def _shares(sess: smpc.Session, plain: torch.Tensor) -> torch.Tensor:
    return additive_shares(plain, sess.world_size, sess.prg)


@given(n=party_counts, seed=st.integers(0, 2**31), size=st.integers(1, 300))
def test_ltz_exact_for_any_ring_element(n: int, seed: int, size: int) -> None:
    g = torch.Generator().manual_seed(seed)
    plain = torch.randint(-(2**63), 2**63 - 1, (size,), dtype=torch.int64, generator=g)
    plain = torch.cat([plain, torch.tensor(_EDGES, dtype=torch.int64)])
    with smpc.Session(parties=n, seed=seed) as sess:
        z = compare.ltz(sess.comm, sess.dealer, _shares(sess, plain)).sum(0)
    assert torch.equal(z, (plain < 0).to(torch.int64))


@given(n=party_counts, seed=st.integers(0, 2**31))
def test_relu_and_bit_exact(n: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    plain = torch.randint(-(2**50), 2**50, (3, 40), dtype=torch.int64, generator=g)
    plain[0, :3] = torch.tensor([0, 1, -1])
    with smpc.Session(parties=n, seed=seed) as sess:
        value, bit = compare.relu(sess.comm, sess.dealer, _shares(sess, plain))
    assert torch.equal(value.sum(0), plain.clamp(min=0))
    assert torch.equal(bit.sum(0), (plain >= 0).to(torch.int64))


def test_sweep_million_zero_wrong_signs() -> None:
    # >= 10^6 random in-range inputs (fixed point, |v| <= 2^15 at f = 16), plus the edges.
    g = torch.Generator().manual_seed(7)
    bound = 1 << 31
    plain = torch.randint(-bound, bound + 1, (1 << 20,), dtype=torch.int64, generator=g)
    plain[:7] = torch.tensor([0, 1, -1, bound, -bound, bound - 1, -bound + 1])
    with smpc.Session(parties=2, seed=3) as sess:
        value, bit = compare.relu(sess.comm, sess.dealer, _shares(sess, plain))
    wrong = (bit.sum(0) != (plain >= 0).to(torch.int64)).sum().item()
    assert wrong == 0
    assert torch.equal(value.sum(0), plain.clamp(min=0))


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_cost_matches_table(n: int) -> None:
    size = 1000
    with smpc.Session(parties=n, seed=1) as sess:
        x = _shares(sess, torch.arange(-size // 2, size // 2, dtype=torch.int64))
        before = sess.stats.snapshot()
        compare.ltz(sess.comm, sess.dealer, x)
        mid = sess.stats.snapshot()
        compare.relu(sess.comm, sess.dealer, x)
        after = sess.stats.snapshot()
    d1, d2 = mid - before, after - mid
    rounds, nbytes = compare.cost(n)
    assert d1.rounds == rounds == 4
    assert d1.by_op["ltz"].rounds == 4
    assert d1.bytes_per_party[0] == nbytes * (n - 1) * size
    rounds_m, nbytes_m = compare.cost(n, mul=True)
    assert d2.rounds == rounds_m == 4
    assert d2.bytes_per_party[0] == nbytes_m * (n - 1) * size
    assert d1.bytes_per_party == [d1.bytes_per_party[0]] * n  # symmetric
    if n == 2:
        assert d1.bytes_per_party[0] / size == 19
        assert d2.bytes_per_party[0] / size == 27  # <= 48 bytes per element per party


def test_open_fields_packs_and_xors() -> None:
    with smpc.Session(parties=3, seed=5) as sess:
        g = torch.Generator().manual_seed(1)
        words = [
            torch.randint(-(2**62), 2**62, (3, 50), dtype=torch.int64, generator=g)
            for _ in range(3)
        ]
        mask = sum(1 << p for p in range(0, 64, 8))  # bit 0 of every byte
        before = sess.stats.snapshot()
        opened = convert.open_fields(sess.comm, words, [mask] * 3, 8, "test")
        d = sess.stats - before
        assert d.rounds == 1 and d.bytes_per_party[0] == 50 * 8 * 2  # 3 words in one element
        for w, o in zip(words, opened, strict=True):
            assert torch.equal(o, (w[0] ^ w[1] ^ w[2]) & mask)


def test_b2a() -> None:
    with smpc.Session(parties=3, seed=5) as sess:
        bits = torch.tensor([0, 1, 1, 0, 1], dtype=torch.int64)
        sh = torch.randint(0, 2, (3, 5), dtype=torch.int64)
        sh[2] = bits ^ sh[0] ^ sh[1]
        out = convert.b2a(sess.comm, sess.dealer, sh, (5,))
        assert torch.equal(out.sum(0), bits)


def test_max_last_tree_and_onehot_ties() -> None:
    plain = torch.tensor(
        [[3, 7, 7, 1, -5], [0, 0, 0, 0, 0], [-9, -2, -3, -2, -8]], dtype=torch.int64
    )
    with smpc.Session(parties=2, seed=1) as sess:
        vals, oh = ring_nl.max_last(sess.comm, sess.dealer, _shares(sess, plain), onehot_scale=1)
    assert oh is not None
    assert torch.equal(vals.sum(0), plain.max(-1).values)
    expected = torch.nn.functional.one_hot(plain.argmax(-1), 5)  # first maximum
    assert torch.equal(oh.sum(0), expected)


@pytest.mark.parametrize("n", [2, 3, 5])
@pytest.mark.parametrize("k", [2, 3, 4, 5, 10, 32, 33, 40])
def test_max_last_pairwise_and_tree_agree_with_torch_on_ties(n: int, k: int) -> None:
    """Both strategies (pairwise for 5 <= k <= 32, a tree otherwise): first maximum wins."""
    g = torch.Generator().manual_seed(k + n)
    plain = torch.randint(-3, 3, (4, k), generator=g, dtype=torch.int64) * (1 << 40)
    plain[0] = 7  # all tied
    with smpc.Session(parties=n, seed=1) as sess:
        before = sess.stats.snapshot()
        vals, oh = ring_nl.max_last(sess.comm, sess.dealer, _shares(sess, plain), onehot_scale=3)
        rounds = (sess.stats - before).rounds
        _, oh_only = ring_nl.max_last(
            sess.comm, sess.dealer, _shares(sess, plain), onehot_scale=3, values=False
        )
    assert vals is not None and oh is not None and oh_only is not None
    assert torch.equal(vals.sum(0), plain.max(-1).values)
    expected = 3 * torch.nn.functional.one_hot(plain.argmax(-1), k)
    assert torch.equal(oh.sum(0), expected) and torch.equal(oh_only.sum(0), expected)
    levels = (k - 1).bit_length()
    pairwise = ring_nl.PAIRWISE_MIN <= k <= ring_nl.PAIRWISE_MAX
    r = compare.cost(n)[0]  # rounds of one comparison (4)
    assert rounds == (2 * r + 1 if pairwise else r + (r + 1) * (levels - 1))


def test_too_many_parties() -> None:
    with smpc.Session(parties=16, seed=1) as sess:
        x = torch.zeros(16, 3, dtype=torch.int64)
        with pytest.raises(ValueError, match="at most 15 parties"):
            compare.ltz(sess.comm, sess.dealer, x)


def test_material_is_fresh_and_masks_opened_values() -> None:
    # Same input twice: the opened c = x + r differs (uniform mask).
    with smpc.Session(parties=2, seed=1) as sess:
        t1 = sess.dealer.request(compare.LtzMaterial((4,)))
        t2 = sess.dealer.request(compare.LtzMaterial((4,)))
    assert not torch.equal(t1["r"], t2["r"])
    for t in (t1, t2):
        r = t["r"].sum(0)
        assert torch.equal(t["rx"][0] ^ t["rx"][1], r)
        assert torch.equal(t["s"].sum(0), (t["s_xor"][0] ^ t["s_xor"][1]) & 1)


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("size", [1, 7, 64, 1000])
def test_fused_comparison_steps_match_the_torch_path(
    n: int, size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The C kernels for the comparison's local steps give the torch path's shares, bit for bit."""
    from smpc import ring

    if ring.native() is None:
        pytest.skip("C kernels not built")
    g = torch.Generator().manual_seed(size + n)
    x = torch.randint(-(2**62), 2**62, (size,), generator=g, dtype=torch.int64)
    x[0] = 0
    with smpc.Session(parties=n, seed=3) as sess:
        t = sess.dealer.request(compare.LtzMaterial((size,)))
        c = x + t["r"].sum(0)
        before = sess.stats.snapshot()
        fused = compare._masked_msb(sess.comm, t, c)
        cost_fused = sess.stats - before
        monkeypatch.setattr(ring, "_kernels", None)
        before = sess.stats.snapshot()
        plain = compare._masked_msb(sess.comm, t, c)
        cost_plain = sess.stats - before
    assert torch.equal(fused, plain)
    assert cost_fused.rounds == cost_plain.rounds
    assert cost_fused.bytes_per_party == cost_plain.bytes_per_party
    s = t["s_xor"][0] & 1
    for i in range(1, n):
        s ^= t["s_xor"][i] & 1
    msb = fused[0].to(torch.int64)
    for i in range(1, n):
        msb ^= fused[i].to(torch.int64)
    assert torch.equal(msb ^ s, (x < 0).to(torch.int64))


@pytest.mark.parametrize("n", [2, 3, 5])
@pytest.mark.parametrize("mul", [False, True])
@pytest.mark.parametrize("size", [3, 200])
def test_fused_comparison_material_equals_derive(
    n: int, mul: bool, size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The provider's C corrections for comparison material equal ``derive``'s, bit for bit."""
    from smpc import ring

    if ring.native() is None:
        pytest.skip("C kernels not built")
    req = compare.LtzMaterial((size,), mul=mul)
    with smpc.Session(parties=n, seed=11) as sess:
        fused = sess.dealer.request(req)
    monkeypatch.setattr(ring, "_kernels", None)
    with smpc.Session(parties=n, seed=11) as sess:
        plain = sess.dealer.request(req)
    assert set(fused) == set(plain)
    for name in plain:
        assert torch.equal(fused[name], plain[name]), name


# ---- the pieces of the 4-round tree, against plaintext --------------------------------


def _xor_shares(plain: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
    """Random XOR shares ``(n, *shape)`` of int64 words."""
    rows = torch.randint(-(2**63), 2**63 - 1, (n - 1, *plain.shape), dtype=torch.int64, generator=g)
    last = plain.clone()
    for row in rows:
        last ^= row
    return torch.cat([rows, last.unsqueeze(0)])


def _xor_open(shares: torch.Tensor) -> torch.Tensor:
    out = shares[0].clone()
    for row in shares[1:]:
        out ^= row
    return out


def _nibbles(x: torch.Tensor) -> torch.Tensor:
    return (x.unsqueeze(-1) >> torch.arange(0, 64, 4)) & 15


@given(n=party_counts, seed=st.integers(0, 2**31), size=st.integers(1, 40))
def test_local_level_gives_each_nibbles_generate_and_propagate(
    n: int, seed: int, size: int
) -> None:
    """Level 1: (G, P) of nibble k = ([r'_k > c'_k], [r'_k == c'_k]) on the low 63 bits."""
    g = torch.Generator().manual_seed(seed)
    c = torch.randint(-(2**63), 2**63 - 1, (size,), dtype=torch.int64, generator=g)
    with smpc.Session(parties=n, seed=seed) as sess:
        t = sess.dealer.request(compare.LtzMaterial((size,)))
        if seed % 3 == 0:  # the same nibble of c and r: P = 1
            c = t["r"].sum(0) ^ (c & 0xF0F0)
        w = _xor_open(compare._level1(sess.comm, t, c))
    low = (1 << 63) - 1
    cn, rn = _nibbles(c & low), _nibbles(t["r"].sum(0) & low)
    assert torch.equal(_nibbles(w) & 1, (rn > cn).to(torch.int64))
    assert torch.equal((_nibbles(w) >> 1) & 1, (rn == cn).to(torch.int64))
    assert torch.equal(_nibbles(w) >> 2, torch.zeros_like(cn))  # clean: nothing else set


def _combine(gp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain (G, P) of 4 groups ``gp[..., j] = G_j | P_j << 1`` (j = 3 most significant)."""
    gs = [gp[..., j] & 1 for j in range(4)]
    ps = [(gp[..., j] >> 1) & 1 for j in range(4)]
    big = gs[3] ^ (ps[3] & gs[2]) ^ (ps[3] & ps[2] & gs[1]) ^ (ps[3] & ps[2] & ps[1] & gs[0])
    return big, ps[3] & ps[2] & ps[1] & ps[0]


@given(n=party_counts, seed=st.integers(0, 2**31), size=st.integers(1, 40))
def test_one_round_levels_are_multi_input_ands(n: int, seed: int, size: int) -> None:
    """Levels 2 and 3 on arbitrary (G, P) bits: the 4-input formulas, one round each."""
    g = torch.Generator().manual_seed(seed)
    pairs = torch.randint(0, 4, (size, 16), dtype=torch.int64, generator=g)
    words = (pairs << torch.arange(0, 64, 4)).sum(-1)
    lanes = torch.randint(0, 4, (size, 4), dtype=torch.int64, generator=g)
    words3 = (lanes << torch.arange(0, 64, 16)).sum(-1)
    with smpc.Session(parties=n, seed=seed) as sess:
        t = sess.dealer.request(compare.LtzMaterial((size,)))
        before = sess.stats.snapshot()
        w2 = compare._level2(sess.comm, t, _xor_shares(words, n, g))
        mid = sess.stats.snapshot()
        width = convert.field_width(n)
        g3 = compare._level3(sess.comm, t, _xor_shares(words3, n, g), width)
        after = sess.stats.snapshot()
    assert (mid - before).rounds == 1 and (after - mid).rounds == 1
    big, prop = _combine(pairs.view(size, 4, 4))
    expected2 = ((big | (prop << 1)) << torch.arange(0, 64, 16)).sum(-1)
    assert torch.equal(_xor_open(w2), expected2)
    assert torch.equal(_xor_open(g3), _combine(lanes)[0])


@pytest.mark.parametrize("n", [6, 9, 15])
def test_many_parties_exact_and_cost(n: int) -> None:
    """3- and 4-bit fields (up to 15 parties): exact, and cost() matches the stats."""
    g = torch.Generator().manual_seed(n)
    plain = torch.randint(-(2**63), 2**63 - 1, (50,), dtype=torch.int64, generator=g)
    plain = torch.cat([plain, torch.tensor(_EDGES, dtype=torch.int64)])
    with smpc.Session(parties=n, seed=n) as sess:
        x = _shares(sess, plain)
        before = sess.stats.snapshot()
        z = compare.ltz(sess.comm, sess.dealer, x)
        mid = sess.stats.snapshot()
        value, _ = compare.relu(sess.comm, sess.dealer, x)
        after = sess.stats.snapshot()
    assert torch.equal(z.sum(0), (plain < 0).to(torch.int64))
    assert torch.equal(value.sum(0), plain.clamp(min=0))
    size = plain.numel()
    for d, mul in ((mid - before, False), (after - mid, True)):
        rounds, nbytes = compare.cost(n, mul=mul)
        assert d.rounds == rounds == 4
        # level 3's bytes are padded to whole words once per opening
        l3 = compare._l3_bytes(convert.field_width(n))
        padded = nbytes * size + (-(l3 * size) % 8) + (-size % 8)
        assert d.bytes_per_party[0] == padded * (n - 1)
    assert compare.cost(n) == (4, 28) and compare.cost(n, mul=True) == (4, 36)


def test_cost_figures() -> None:
    assert compare.cost(2) == compare.cost(3) == (4, 19)
    assert compare.cost(2, mul=True) == compare.cost(3, mul=True) == (4, 27)


@pytest.mark.distributed
@pytest.mark.timeout(90)
@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("n", [2, 3])
def test_distributed_runtime_matches_plaintext(n: int, native: bool) -> None:
    """Both runtimes, the C kernels and the torch path: exact, 4 rounds each."""
    import functools

    from smpc.launch import run

    from .compare_programs import ltz_program

    if native and ring.native() is None:
        pytest.skip("C kernels not built")
    plain = torch.tensor(_EDGES + [5, -7, 3 << 40], dtype=torch.int64)
    program = functools.partial(ltz_program, plain=plain, native=native)
    results = run(program, parties=n, timeout=30)
    for res in results:
        assert torch.equal(res["ltz"], (plain < 0).to(torch.int64))
        assert torch.equal(res["relu"], plain.clamp(min=0))
        assert torch.equal(res["bit"], (plain >= 0).to(torch.int64))
        assert res["rounds"] == 8  # ltz then relu


def test_product_types_build_on_earlier_ones() -> None:
    """Each product type minus its lowest element is one element or an earlier type (C kernels)."""
    for types in (compare._PROD1, compare._PROD2, compare._PROD2[: compare._NG3]):
        masks = [sum(1 << v for v in t) for t in types]
        for i, m in enumerate(masks):
            rest = m & (m - 1)
            assert rest & (rest - 1) == 0 or rest in masks[:i]
    # the level-2 table on public inputs alone (all masks 0): the plain formulas
    for d in range(256):
        big, prop = _combine(
            torch.tensor([[(d >> j) & 1 | ((d >> (4 + j)) & 1) << 1 for j in range(4)]])
        )
        entry = compare._table2()[d]
        assert (entry >> compare._ONE2) & 1 == big.item()
        assert (entry >> (32 + compare._ONE2)) & 1 == prop.item()
    assert len(compare._PROD2) == 22 and compare._NG3 == 15


def test_kernels_refuse_other_product_types() -> None:
    if ring.native() is None:
        pytest.skip("C kernels not built")
    req = compare.LtzMaterial((3,))
    bad = compare._types_tensor().clone()
    bad[0] += 1
    zeros = {c.name: torch.zeros(1, 3, dtype=torch.int64) for c in req.components()}
    out = {c.name: torch.zeros(3, dtype=torch.int64) for c in req.components()}
    with pytest.raises(ValueError, match="product types"):
        ring.native().ltz4_correct(
            *[zeros[k].data_ptr() if k in zeros else 0 for k in ("r", "a", "m", "s_xor")],
            *[zeros[k].data_ptr() if k in zeros else 0 for k in
              ("rx", "rp0", "rp1", "rp2", "q2a", "q2b", "s", "as")],
            *[out[k].data_ptr() if k in out else 0 for k in
              ("rx", "rp0", "rp1", "rp2", "q2a", "q2b", "s", "as")],
            bad.data_ptr(), 1, 1, 3,
        )  # fmt: skip


@pytest.mark.parametrize("n", [5, 9])
def test_fused_steps_match_the_torch_path_with_wide_fields(
    n: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """3- and 4-bit fields: the C kernels give the torch path's shares and payloads."""
    if ring.native() is None:
        pytest.skip("C kernels not built")
    g = torch.Generator().manual_seed(n)
    x = torch.randint(-(2**62), 2**62, (37,), generator=g, dtype=torch.int64)
    with smpc.Session(parties=n, seed=3) as sess:
        t = sess.dealer.request(compare.LtzMaterial((37,)))
        c = x + t["r"].sum(0)
        before = sess.stats.snapshot()
        fused = compare._masked_msb(sess.comm, t, c)
        cost_fused = sess.stats - before
        monkeypatch.setattr(ring, "_kernels", None)
        before = sess.stats.snapshot()
        plain = compare._masked_msb(sess.comm, t, c)
        cost_plain = sess.stats - before
    assert torch.equal(fused, plain)
    assert cost_fused.bytes_per_party == cost_plain.bytes_per_party
    assert cost_fused.rounds == cost_plain.rounds == 2  # the two tree levels
