"""`recipe suggest`: engine-measured channel savings, sensitivity, the greedy plan, its recipe, and --verify."""

import json
import logging

import pytest
import torch
import yaml

from sparseyolo.analysis.recipe_suggest import (
    Suggestion,
    prunable_groups,
    suggest,
    thinned_copy,
)
from sparseyolo.analysis.recipe_suggest_output import recipe_text
from sparseyolo.analysis.recipe_suggest_verify import find_suggestion, verify
from sparseyolo.models import build_model
from sparseyolo.recipe import Recipe
from sparseyolo.sparsity.channel_graph import trace_channel_groups


@pytest.fixture(scope="module")
def model(shapes_data):
    torch.manual_seed(0)
    m = build_model(shapes_data["cfg"], nc=3).eval()
    with torch.no_grad():  # spread the BN scales so channel ranks differ
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.weight.uniform_(0.5, 1.5)
    return m


def _score(m):
    """A stand-in for mAP that drops as channels vanish: the mean |output| of the raw head."""
    with torch.no_grad():
        m.eval()
        out = m(torch.ones(1, 3, 64, 64) * 0.5)
        return float(out[0].abs().mean())


def test_groups_exclude_the_head_and_thinned_copies_shrink(model):
    graph = trace_channel_groups(model, torch.zeros(1, 3, 64, 64))
    groups = prunable_groups(model, graph)
    head = {f"{n}.weight" for n, _ in model.model[-1].named_modules(prefix=f"model.{len(model.model) - 1}")}
    assert groups and not any(set(g.params) & head for g in groups)
    thin = thinned_copy(model, graph, {g.group: 0.5 for g in groups}, groups, round_to=2)
    assert sum(p.numel() for p in thin.parameters()) < 0.5 * sum(p.numel() for p in model.parameters())
    assert model(torch.zeros(1, 3, 64, 64))[0].shape == thin(torch.zeros(1, 3, 64, 64))[0].shape


@pytest.fixture(scope="module")
def suggestion(model, tmp_path_factory):
    s = suggest(
        model,
        _score,
        "dense.pt",
        engine="onnxruntime",
        target_speedup=1.3,
        img=64,
        round_to=2,
        threads=1,
        time_s=0.3,
        fractions=(0.5, 0.75),
    )
    return s


def test_suggestion_meets_the_target_with_measured_numbers(suggestion):
    s = suggestion
    removed = [c for c in s.groups if c.fraction]
    assert removed and s.fp32_ms > 0 and s.predicted_ms > 0
    assert s.predicted_speedup == pytest.approx(s.fp32_ms / s.predicted_ms)
    assert all(set(c.saving_ms) == set(c.damage) for c in s.groups)
    assert all(c.kept < c.channels for c in removed) and all(c.kept == c.channels for c in s.groups if not c.fraction)
    # chosen only where thinning saves time on this engine
    assert all(c.saving_ms[str(c.fraction)] > 0 for c in removed)


def test_recipe_loads_and_prunes_what_was_chosen(suggestion, model):
    text = recipe_text(suggestion, epochs=10)
    assert f"predicted {suggestion.predicted_speedup:.2f}x" in text
    recipe = Recipe.load(text)
    manager = recipe.manager()
    assert manager.max_epochs == 10
    chosen = {p: c.fraction for c in suggestion.groups if c.fraction for p in c.params}
    finals = {p: m.final_sparsity for m in manager.pruning_modifiers for p in m.params}
    assert finals == chosen
    int8 = recipe_text(Suggestion.from_dict({**suggestion.to_dict(), "int8": True}), epochs=20)
    q = [m for m in Recipe.load(int8).manager().modifiers if m.tag == "QuantizationModifier"]
    assert q and q[0].start_epoch == 15 and q[0].submodules[0] == "model.0"
    assert q[0].weight_bits == 7 and q[0].per_channel  # exact on ONNX Runtime with or without VNNI


def test_verify_times_a_trained_run(suggestion, model, tmp_path):
    """--verify: the run's best.pt (here: the thinned plan itself) against the dense FP32 model."""
    from sparseyolo.models.checkpoint import save_checkpoint

    graph = trace_channel_groups(model, torch.zeros(1, 3, 64, 64))
    thin = thinned_copy(model, graph, {c.group: c.fraction for c in suggestion.groups}, suggestion.groups, 2)
    thin.record_widths()
    run = tmp_path / "run"
    (run / "weights").mkdir(parents=True)
    save_checkpoint(run / "weights/best.pt", model=thin, names=list(thin.names), model_yaml=thin.yaml)
    dense = save_checkpoint(tmp_path / "dense.pt", model=model, names=list(model.names), model_yaml=model.yaml)
    s = Suggestion.from_dict({**suggestion.to_dict(), "weights": str(dense)})
    (tmp_path / "suggest.json").write_text(json.dumps(s.to_dict()))
    (tmp_path / "recipe.md").write_text(recipe_text(s))
    (run / "opt.yaml").write_text(yaml.safe_dump({"recipe": str(tmp_path / "recipe.md")}))
    assert find_suggestion(run) == tmp_path / "suggest.json"
    v = verify(run, s, threads=1, time_s=0.5)
    assert v.measured_speedup > 1.0  # the thinned architecture is faster, trained or not
    assert len(v.round_speedups) == 4 and min(v.round_speedups) <= v.measured_speedup <= max(v.round_speedups)
    assert abs(v.error) < 0.5  # same architecture as predicted; timing noise on a loaded 2-core box


def test_cli_errors_are_one_line(tmp_path, capsys):
    from sparseyolo.cli.main import main

    assert main(["recipe", "suggest", "--weights", "w.pt"]) == 2
    assert "needs --weights (the trained dense model) and --data" in capsys.readouterr().err
    assert main(["recipe", "suggest", "--verify", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a training run folder" in err[0]


def _fake_engine(reward_zeros: bool):
    """A deterministic stand-in for an engine's timing: latency proportional to the conv weights it
    multiplies, all of them (ONNX Runtime, OpenVINO) or only the non-zero ones (DeepSparse)."""
    import onnx
    from onnx import numpy_helper

    def time_files(files, engine, img, threads, time_s):
        out = []
        for f in files:
            weights = [numpy_helper.to_array(t) for t in onnx.load(str(f)).graph.initializer if len(t.dims) == 4]
            out.append(1e-3 * sum(int((w != 0).sum()) if reward_zeros else w.size for w in weights))
        return out

    return time_files


def test_weight_sparsity_is_chosen_where_the_engine_rewards_zeros(model, monkeypatch):
    import sparseyolo.analysis.recipe_suggest as rs
    import sparseyolo.analysis.recipe_suggest_timing as timing

    monkeypatch.setattr(timing, "time_files", _fake_engine(reward_zeros=True))
    s = suggest(model, _score, "dense.pt", engine="deepsparse", target_speedup=3.0, int8=True, img=64, round_to=4)
    assert s.sparsity_gain == pytest.approx(1 / (1 - rs.PROBE_SPARSITY), rel=0.05)
    assert s.mask_type == [1, 4] and s.layers and all(set(x.saving_ms) == {"0.5", "0.7", "0.85"} for x in s.layers)
    sparse = {x.param: x.sparsity for x in s.layers if x.sparsity}
    thinned = {p for c in s.groups if c.fraction for p in c.params}
    assert sparse and not set(sparse) & thinned  # a weight is thinned or sparse, never both
    assert s.predicted_speedup >= 3.0 and s.predicted_ms == pytest.approx(s.fp32_ms / s.predicted_speedup)
    # the recipe prunes those weights in [1, 4] blocks to the chosen levels, and still loads
    manager = Recipe.load(recipe_text(s, epochs=10)).manager()
    blocks = {p: m.final_sparsity for m in manager.pruning_modifiers if m.mask_type == [1, 4] for p in m.params}
    assert blocks == sparse
    again = Suggestion.from_dict(json.loads(json.dumps(s.to_dict())))
    assert again.layers == s.layers and again.mask_type == [1, 4]


@pytest.mark.parametrize("faster", ["int8", "float"])
def test_the_first_conv_is_quantized_where_the_engine_runs_that_faster(model, monkeypatch, faster):
    """The stem conv's precision is timed both ways on the dense int8 model; every later int8 export and
    the recipe's QuantizationModifier follow the faster one."""
    import onnx

    import sparseyolo.analysis.recipe_suggest_timing as timing

    cost, slower, stems = _fake_engine(reward_zeros=False), "float" if faster == "int8" else "int8", []

    def stem_timed(files, engine, img, threads, time_s):
        for f in files:
            if f.name in ("int8.onnx", "plan0.onnx"):  # the dense int8 model and the first plan
                graph = onnx.load(str(f)).graph
                made_by = {o: n.op_type for n in graph.node for o in n.output}
                (stem,) = [n for n in graph.node if n.op_type == "Conv" and n.name.startswith("/model.0/")]
                stems.append(made_by.get(stem.input[1]) == "DequantizeLinear")
        ms = cost(files, engine, img, threads, time_s)
        return [t + (5.0 if f.name == f"stem_{slower}.onnx" else 0.0) for f, t in zip(files, ms, strict=True)]

    monkeypatch.setattr(timing, "time_files", stem_timed)
    kw = dict(engine="onnxruntime", target_speedup=1.3, int8=True, img=64, round_to=2, fractions=(0.5,))
    s = suggest(model, _score, "dense.pt", weight_sparsity="off", **kw)
    assert s.stem_int8 == (faster == "int8") and s.stem_ms[slower] > s.stem_ms[faster]
    assert stems and set(stems) == {faster == "int8"}
    text = recipe_text(s, epochs=10)
    (q,) = [m for m in Recipe.load(text).manager().modifiers if m.tag == "QuantizationModifier"]
    assert (q.submodules[0] == "model.0") == (faster == "int8") and q.submodules[-1] == f"model.{len(model.model) - 2}"
    assert f"the first conv in {faster}: the dense int8 model took" in text


def test_engines_that_multiply_zeros_get_channels_only(model, monkeypatch, caplog):
    import sparseyolo.analysis.recipe_suggest_timing as timing

    monkeypatch.setattr(timing, "time_files", _fake_engine(reward_zeros=False))
    kw = dict(engine="onnxruntime", target_speedup=1.3, img=64, round_to=2, fractions=(0.5, 0.75))
    with caplog.at_level(logging.INFO, logger="sparseyolo"):
        s = suggest(model, _score, "dense.pt", **kw)
    assert s.sparsity_gain == pytest.approx(1.0) and s.layers == []
    assert "does not reward weight sparsity" in caplog.text
    assert any(c.fraction for c in s.groups) and "unstructured" not in recipe_text(s).split("---")[1]
    off = suggest(model, _score, "dense.pt", weight_sparsity="off", **kw)
    assert off.sparsity_gain is None and off.layers == []
    with pytest.raises(Exception, match="--weight-sparsity must be one of"):
        suggest(model, _score, "dense.pt", weight_sparsity="maybe", **kw)


def test_noisy_savings_are_smoothed_and_the_search_jumps_past_a_dip():
    from sparseyolo.analysis.latency_fit import non_decreasing, smoothed
    from sparseyolo.analysis.recipe_suggest import GroupChoice
    from sparseyolo.analysis.recipe_suggest_search import next_cut

    assert non_decreasing([0.0, 13.0, 1.0, 9.0]) == [0.0, 7.0, 7.0, 9.0]  # the dip is pooled with its neighbour
    assert non_decreasing([1.0, 2.0, 3.0]) == [1.0, 2.0, 3.0]

    # timing noise made the middle level look slower than the first: the search must still reach 75%
    def at(*values):
        return dict(zip(("0.25", "0.5", "0.75"), values, strict=True))

    dip = GroupChoice(1, ["a.weight"], 64, saving_ms=at(5.0, 1.0, 20.0), damage=at(0.0, 0.0, 0.0))
    flat = GroupChoice(2, ["b.weight"], 64, saving_ms=at(1.0, 1.0, 1.0), damage=at(0.5, 0.5, 0.5))
    cuts = [dip, flat]
    saving = {c.key: smoothed(c.saving_ms) for c in cuts}
    damage = {c.key: smoothed(c.damage) for c in cuts}
    assert saving[dip.key] == {0.0: 0.0, 0.25: 3.0, 0.5: 3.0, 0.75: 20.0}
    assert next_cut(cuts, {}, saving, damage) == (dip, 0.75)
    assert next_cut(cuts, {dip.key: 0.75}, saving, damage) == (flat, 0.25)


def test_a_plan_faster_than_needed_is_trimmed(model, monkeypatch):
    """Per-variant timings that understate each saving make the first plan overshoot; the search rescales
    and keeps the timed plan that meets the target at the least predicted loss."""
    import sparseyolo.analysis.recipe_suggest_timing as timing

    cost, timed_plans = _fake_engine(reward_zeros=False), []

    def understated(files, engine, img, threads, time_s):
        ms = cost(files, engine, img, threads, time_s)
        plans = [t for f, t in zip(files, ms, strict=True) if f.name.startswith("plan")]
        if plans:
            if plans[0] not in timed_plans:  # each plan is timed in several rounds
                timed_plans.append(plans[0])
            return ms
        base = dict(zip((f.name for f in files), ms, strict=True))["fp32.onnx"]
        return [base - 0.4 * (base - t) for t in ms]  # savings seen at 40% (the base itself unchanged)

    monkeypatch.setattr(timing, "time_files", understated)
    s = suggest(model, _score, "dense.pt", engine="onnxruntime", target_speedup=1.3, img=64, round_to=2)
    assert len(timed_plans) >= 2 and timed_plans[0] < min(timed_plans[1:])  # the first plan cut too much
    assert s.predicted_speedup >= 1.3 and s.predicted_ms in timed_plans[1:]


def test_savings_fitted_to_work_removed_beat_noisy_single_timings():
    """Timing noise as large as the savings (a busy 2-core box): the plane in FLOPs and feature-map
    megabytes, fitted to every variant, recovers the true savings far better than each variant's own
    timing; noiseless rounds keep them exact."""
    import numpy as np

    from sparseyolo.analysis.latency_fit import fit_savings

    rng = np.random.default_rng(0)
    gflops = np.concatenate([[0.0], rng.uniform(0.05, 1.5, 36)])  # work each variant removes
    mbytes = np.concatenate([[0.0], rng.uniform(0.0, 0.5, 33), [2.5, 3.0, 3.5]])  # an early, wide layer last
    quirks = np.concatenate([[0.0], rng.normal(0.0, 0.3, 36)])
    real = 30.0 - 8.0 * gflops - 2.0 * mbytes + quirks  # ms
    true_saving = real[0] - real[1:]
    noisy = real + rng.normal(0.0, 3.0, (2, 37))  # two rounds, +/-3 ms each
    noisy[:, 5] += 40.0  # one variant hit by a stall in both rounds
    savings, fit = fit_savings(noisy, gflops, mbytes)
    measured = noisy.mean(axis=0)[0] - noisy.mean(axis=0)[1:]
    ok = np.arange(36) != 4  # the stalled one, as a saving
    err_fit = np.sqrt(np.mean((np.array(savings) - true_saving)[ok] ** 2))
    err_raw = np.sqrt(np.mean((measured - true_saving)[ok] ** 2))
    assert err_fit < 0.5 * err_raw
    assert fit.ms_per_gflop == pytest.approx(8.0, rel=0.2) and fit.ms_per_mbyte == pytest.approx(2.0, rel=0.5)
    assert fit.weight < 0.2 and fit.noise_ms == pytest.approx(3.0 / np.sqrt(2), rel=0.4)
    # FLOPs alone miss what the wide early layer saves in memory-bound ops
    flops_only, _ = fit_savings(noisy, gflops)
    assert abs(flops_only[-1] - true_saving[-1]) > 2 * abs(savings[-1] - true_saving[-1])

    exact, fit = fit_savings(np.stack([real, real]), gflops, mbytes)
    assert fit.weight == 1.0 and np.allclose(exact, true_saving)
    with pytest.raises(ValueError, match="work figures"):
        fit_savings([[1.0, 2.0]], [0.0])
