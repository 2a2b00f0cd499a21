"""Property-based tests of the magnitude mask creators, the masker, the schedule and the channel pruner.

Weights come from a seeded generator (optionally quantised to force ties and exact zeros); shapes are
drawn so that the block / N:M pattern tiles them (conv 4-D and linear 2-D).
"""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sparseyolo.sparsity import (
    ParamMasker,
    interpolate,
    magnitude_masks,
    parse_mask_type,
)
from sparseyolo.sparsity.channel_pruner import _select, kept_channels
from sparseyolo.sparsity.masks import MaskType, check_shape, from_groups, to_groups
from sparseyolo.utils.errors import ConfigError

# no example database: the tests write nothing outside tmp_path
FAST = settings(max_examples=60, deadline=None, database=None)
SLOW = settings(max_examples=20, deadline=None, database=None)
TRAIN = settings(max_examples=8, deadline=None, database=None)


MASK_TYPES = ["unstructured", [1, 1], [1, 4], [2, 2], [4, 1], [1, 2], "block4", "2:4", "1:4", "3:4", "1:2", "4:4"]
mask_types = st.sampled_from(MASK_TYPES).map(parse_mask_type)
targets = st.floats(0.0, 1.0, allow_nan=False)


@st.composite
def shapes(draw, mt: MaskType):
    bo, bi = mt.block
    o = bo * draw(st.integers(1, 4))
    i = bi * draw(st.integers(1, 4))
    k = draw(st.sampled_from([None, 1, 3]))  # None: a linear weight
    return (o, i) if k is None else (o, i, k, k)


def make_weight(shape, seed: int, quantised: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g)
    return (w * 2).round() / 2 if quantised else w  # ties and exact zeros


@st.composite
def layers(draw, mt: MaskType, n_min: int = 1, n_max: int = 3):
    n = draw(st.integers(n_min, n_max))
    quantised = draw(st.booleans())
    return [make_weight(draw(shapes(mt)), draw(st.integers(0, 2**31 - 1)), quantised) for _ in range(n)]


def dense(ws):
    return [torch.ones_like(w, dtype=torch.bool) for w in ws]


def n_units(w, mt: MaskType) -> int:
    """Prunable units: groups for unstructured/block, single weights for N:M."""
    return w.numel() if mt.kind == "nm" else w.numel() // (mt.block[0] * mt.block[1])


def pruned_units(mask, mt: MaskType) -> int:
    if mt.kind == "nm":
        return int((~mask).sum())
    return int((~to_groups(mask, mt.block)).all(1).sum())


def nm_cap(w, mt: MaskType) -> int:
    return w.numel() // mt.m * (mt.m - mt.n)


def expected_pruned(w, mt: MaskType, target: float, already: int = 0) -> int:
    k = round(target * n_units(w, mt))
    if mt.kind == "nm":
        k = min(k, nm_cap(w, mt))
    return max(k, already)


def check_pattern(mask, mt: MaskType):
    """Block: every group all kept or all pruned. N:M: at most M - N pruned per group of M."""
    g = to_groups(mask, mt.block)
    if mt.kind == "nm":
        assert g.shape[1] == mt.m
        assert int((~g).sum(1).max()) <= mt.m - mt.n
    else:
        assert torch.equal(g.all(1), g.any(1))


# -- parsing and grouping --------------------------------------------------------------------------


@FAST
@given(mask_types)
def test_parse_round_trips_through_recipe_value(mt):
    assert parse_mask_type(mt.to_recipe()) == mt
    assert 0.0 <= mt.max_sparsity <= 1.0
    if mt.kind == "nm":
        assert mt.block == (1, mt.m) and mt.max_sparsity == (mt.m - mt.n) / mt.m


@FAST
@given(st.integers(1, 16), st.integers(1, 16))
def test_parse_nm_and_blocks(n, m):
    if n <= m:
        mt = parse_mask_type(f" {n} : {m} ")
        assert (mt.kind, mt.n, mt.m, mt.block) == ("nm", n, m, (1, m))
    else:
        with pytest.raises(ConfigError):
            parse_mask_type(f"{n}:{m}")
    mt = parse_mask_type([n, m])
    assert mt.kind == ("unstructured" if (n, m) == (1, 1) else "block")
    if mt.kind == "block":
        assert mt.block == (n, m)


@FAST
@given(st.data())
def test_groups_round_trip_and_membership(data):
    mt = data.draw(mask_types)
    shape = data.draw(shapes(mt))
    check_shape(shape, mt, "w")
    t = torch.arange(math.prod(shape), dtype=torch.float64).reshape(shape)
    g = to_groups(t, mt.block)
    bo, bi = mt.block
    assert g.shape == (t.numel() // (bo * bi), bo * bi)
    assert torch.equal(from_groups(g, shape, mt.block), t)
    # members of a group: bo consecutive outputs x bi consecutive inputs at one kernel position
    idx = torch.stack(torch.meshgrid(*[torch.arange(s) for s in shape], indexing="ij"), -1).reshape(-1, len(shape))
    members = idx[g.reshape(-1).long()].reshape(g.shape[0], bo * bi, len(shape))

    def same(col, size):
        return torch.equal(
            members[:, :, col].div(size, rounding_mode="floor"),
            members[:, :1, col].div(size, rounding_mode="floor").expand(-1, bo * bi),
        )

    assert same(0, bo) and same(1, bi)
    assert torch.equal(members[:, :, 2:], members[:, :1, 2:].expand(-1, bo * bi, -1))
    assert len({tuple(r) for r in members.reshape(-1, len(shape)).tolist()}) == t.numel()  # a partition


# -- magnitude masks -------------------------------------------------------------------------------


@FAST
@given(st.data())
def test_per_layer_counts_pattern_and_ranking(data):
    mt = data.draw(mask_types)
    ws = data.draw(layers(mt))
    ts = data.draw(st.lists(targets, min_size=len(ws), max_size=len(ws)))
    masks = magnitude_masks(ws, dense(ws), ts, mt)
    for w, m, t in zip(ws, masks, ts, strict=False):
        assert m.shape == w.shape and m.dtype == torch.bool
        check_pattern(m, mt)
        assert pruned_units(m, mt) == expected_pruned(w, mt, t)
        a = to_groups(w.abs(), mt.block)
        k = to_groups(m, mt.block)
        if mt.kind == "nm":
            # inside a group, every pruned weight is no larger than every kept one
            pruned_max = torch.where(~k, a, torch.full_like(a, -math.inf)).amax(1)
            kept_min = torch.where(k, a, torch.full_like(a, math.inf)).amin(1)
            assert bool((pruned_max <= kept_min).all())
        else:
            s = a.mean(1)
            kept = k.all(1)
            if kept.any() and (~kept).any():
                assert float(s[~kept].max()) <= float(s[kept].min())


@FAST
@given(st.data())
def test_scalar_target_equals_broadcast_list(data):
    mt = data.draw(mask_types)
    ws = data.draw(layers(mt))
    t = data.draw(targets)
    a = magnitude_masks(ws, dense(ws), t, mt)
    b = magnitude_masks(ws, dense(ws), [t] * len(ws), mt)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=False))


@FAST
@given(st.data())
def test_zero_target_layer_stays_intact(data):
    mt = data.draw(mask_types)
    ws = data.draw(layers(mt, n_min=2))
    zero = data.draw(st.integers(0, len(ws) - 1))
    ts = data.draw(st.lists(targets, min_size=len(ws), max_size=len(ws)))
    ts[zero] = 0.0
    masks = magnitude_masks(ws, dense(ws), ts, mt)
    assert bool(masks[zero].all())
    assert all(bool(m.all()) for m in magnitude_masks(ws, dense(ws), 0.0, mt))


@FAST
@given(st.data())
def test_global_ranking_prunes_exact_total(data):
    mt = data.draw(mask_types)
    ws = data.draw(layers(mt, n_min=1, n_max=4))
    t = data.draw(targets)
    masks = magnitude_masks(ws, dense(ws), data.draw(st.sampled_from([t, [t]])), mt, global_sparsity=True)
    total = sum(n_units(w, mt) for w in ws)
    k = round(t * total)
    if mt.kind == "nm":
        k = min(k, sum(nm_cap(w, mt) for w in ws))
    assert sum(pruned_units(m, mt) for m in masks) == k
    for m in masks:
        check_pattern(m, mt)
    if mt.kind != "nm":  # one ranking: no pruned group scores above a kept group of any tensor
        scores = torch.cat([to_groups(w.abs(), mt.block).mean(1) for w in ws])
        kept = torch.cat([to_groups(m, mt.block).all(1) for m in masks])
        if kept.any() and (~kept).any():
            assert float(scores[~kept].max()) <= float(scores[kept].min())


@SLOW
@given(st.data())
def test_masks_only_grow_through_increasing_schedule(data):
    """Schedule-driven updates with random weight changes in between: a pruned weight stays pruned,
    and each update prunes max(round(target * n), already pruned) units."""
    mt = data.draw(mask_types)
    ws = data.draw(layers(mt))
    inter = data.draw(st.sampled_from(["linear", "cubic", "inverse_cubic"]))
    init = data.draw(st.floats(0.0, 0.5))
    final = data.draw(st.floats(init, 1.0))
    start, end = 0.0, float(data.draw(st.integers(1, 6)))
    global_sparsity = data.draw(st.booleans())
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    masks = dense(ws)
    prev_t = -1.0
    for step in range(int(end) * 2 + 2):
        t = interpolate(step / 2, start, end, init, final, inter)
        assert t >= prev_t - 1e-12
        prev_t = t
        new = magnitude_masks(ws, masks, t, mt, global_sparsity=global_sparsity)
        for old, m in zip(masks, new, strict=False):
            assert not bool((m & ~old).any()), "a pruned weight was revived"
            check_pattern(m, mt)
        if not global_sparsity:
            for w, old, m in zip(ws, masks, new, strict=False):
                assert pruned_units(m, mt) == expected_pruned(w, mt, t, pruned_units(old, mt))
        masks = new
        # training moves every weight, pruned ones included (as if the masker were off)
        ws = [w + torch.randn(w.shape, generator=g) * data.draw(st.sampled_from([0.0, 0.1, 3.0])) for w in ws]
    assert t == final


@FAST
@given(st.data())
def test_lower_target_leaves_mask_unchanged(data):
    mt = data.draw(mask_types)
    ws = data.draw(layers(mt))
    hi = data.draw(targets)
    lo = data.draw(st.floats(0.0, hi))
    masks = magnitude_masks(ws, dense(ws), hi, mt)
    ws2 = [torch.randn_like(w) for w in ws]  # new weights may rank differently
    again = magnitude_masks(ws2, masks, lo, mt)
    assert all(torch.equal(a, b) for a, b in zip(masks, again, strict=False))


# -- schedule --------------------------------------------------------------------------------------


@FAST
@given(
    st.sampled_from(["linear", "cubic", "inverse_cubic"]),
    st.floats(0, 1),
    st.floats(0, 1),
    st.floats(-5, 50),
    st.floats(0, 50),
    st.floats(-10, 60),
    st.floats(-10, 60),
)
def test_interpolate_bounds_endpoints_monotone(inter, y0, y1, start, length, e1, e2):
    end = start + length
    lo, hi = min(y0, y1), max(y0, y1)
    a, b = sorted((e1, e2))
    ya, yb = interpolate(a, start, end, y0, y1, inter), interpolate(b, start, end, y0, y1, inter)
    for y in (ya, yb):
        assert lo - 1e-12 <= y <= hi + 1e-12
    if y1 >= y0:
        assert yb >= ya - 1e-12
    else:
        assert yb <= ya + 1e-12
    if end > start:
        assert interpolate(start, start, end, y0, y1, inter) == y0
        assert interpolate(start - 1, start, end, y0, y1, inter) == y0
    assert interpolate(end, start, end, y0, y1, inter) == y1
    assert interpolate(end + 1, start, end, y0, y1, inter) == y1


# -- masker ----------------------------------------------------------------------------------------


@TRAIN
@given(st.data())
def test_masker_holds_pruned_weights_at_zero_through_training(data):
    mt = data.draw(st.sampled_from(["unstructured", [1, 4], [2, 2], "2:4"]).map(parse_mask_type))
    torch.manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 2 * 2, 4))
    opt_name = data.draw(st.sampled_from(["sgd", "nesterov", "adam", "adamw", "amsgrad"]))
    params = model.parameters()
    opt = {
        "sgd": lambda: torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-3),
        "nesterov": lambda: torch.optim.SGD(params, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
        "adam": lambda: torch.optim.Adam(params, lr=0.01, weight_decay=1e-3),
        "adamw": lambda: torch.optim.AdamW(params, lr=0.01, weight_decay=0.1),
        "amsgrad": lambda: torch.optim.Adam(params, lr=0.01, amsgrad=True),
    }[opt_name]()
    named = [(n, p) for n, p in model.named_parameters() if n.endswith("weight")]
    masker = ParamMasker(named)
    masker.enable()

    def step():
        opt.zero_grad()
        model(torch.randn(2, 4, 2, 2)).pow(2).mean().backward()
        opt.step()

    step()  # optimizer state filled before pruning
    ts = sorted(data.draw(st.lists(targets, min_size=1, max_size=3)))
    for t in ts:
        ws = [p.detach() for _, p in named]
        old = [masker.masks[n] for n, _ in named]
        new = magnitude_masks(ws, old, t, mt)
        masker.set_masks({n: m for (n, _), m in zip(named, new, strict=False)}, opt)
        for (n, p), m in zip(named, new, strict=False):
            assert not bool(p[~m].ne(0).any())
            assert masker.sparsity(n) == pytest.approx(1 - float(m.sum()) / m.numel())
        for _ in range(2):
            step()  # no masker.apply(): gradient hook + zeroed state must keep them at 0
            for (n, p), m in zip(named, new, strict=False):
                assert not bool(p[~m].ne(0).any()), f"{opt_name} moved a pruned weight of {n}"


# -- structured channel pruner ---------------------------------------------------------------------


@FAST
@given(st.integers(1, 512), st.floats(0, 1), st.integers(1, 64))
def test_kept_channels_multiple_of_round_to(size, sparsity, round_to):
    keep = kept_channels(size, sparsity, round_to)
    assert 0 <= keep <= size
    assert keep % round_to == 0 or keep == size
    assert kept_channels(size, 0.0, round_to) == size
    if round_to == 1:
        assert keep == size - round(sparsity * size)
    # more sparsity never keeps more channels
    assert kept_channels(size, min(1.0, sparsity + 0.1), round_to) <= keep


@FAST
@given(st.data())
def test_channel_select_exact_and_monotone(data):
    size = data.draw(st.integers(1, 96))
    round_to = data.draw(st.sampled_from([1, 2, 4, 8, 16]))
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    quantised = data.draw(st.booleans())
    keep = torch.ones(size, dtype=torch.bool)
    for t in sorted(data.draw(st.lists(targets, min_size=1, max_size=5))):
        scores = torch.rand(size, generator=g)
        if quantised:
            scores = (scores * 4).round()
        n_keep = max(kept_channels(size, t, round_to), 1)  # as ChannelPruner.update
        new = _select(scores, keep, n_keep)
        assert new.dtype == torch.bool and new.shape == keep.shape
        assert not bool((new & ~keep).any()), "a removed channel was revived"
        assert int(new.sum()) == min(n_keep, int(keep.sum()))
        if int(keep.sum()) >= n_keep:
            assert int(new.sum()) == n_keep
        dropped = keep & ~new
        if dropped.any() and new.any():  # the highest-scored surviving channels are kept
            assert float(scores[dropped].max()) <= float(scores[new].min())
        keep = new
