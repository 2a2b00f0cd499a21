"""Structured (channel) pruning: dependency groups from the traced graph, exact thinning, the
optimizer and masks following it, clear errors, and a YOLO training run that thins and resumes."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from conftest import stop_after_epoch
from torch import nn

from sparseyolo.models import build_model
from sparseyolo.recipe import Recipe
from sparseyolo.sparsity.channel_graph import trace_channel_groups
from sparseyolo.utils.errors import ConfigError


class ResCatNet(nn.Module):
    """A plain CNN with a residual add, a concat, a max-pool and a linear head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.a = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(16, 24, 1), nn.BatchNorm2d(24), nn.ReLU())
        self.c = nn.Sequential(nn.Conv2d(40, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))

    def forward(self, x):
        x = self.stem(x)
        x = x + self.a(x)
        y = torch.cat([x, self.b(x)], 1)
        return self.head(self.c(nn.functional.max_pool2d(y, 2)))


def _randomize_norms(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial BatchNorm statistics and affine parameters, so that exactness means something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.randn(n, generator=g))
                m.bias.copy_(torch.randn(n, generator=g) * 0.3)


def _recipe(sparsity: float = 0.5, extra: str = "", params: str = "__ALL_PRUNABLE__", thin_at: float = 1.0) -> Recipe:
    return Recipe.load(f"""
modifiers:
  - !GMPruningModifier {{params: {params}, init_sparsity: {sparsity}, final_sparsity: {sparsity},
                        mask_type: filter, start_epoch: 0, end_epoch: 0, update_frequency: 1{extra}}}
  - !LayerThinningModifier {{start_epoch: {thin_at}}}
""")


def _mask_then_thin(model: nn.Module, x: torch.Tensor, recipe: Recipe, size: int = 64):
    """Attach (masks applied at epoch 0), snapshot the masked model, step to the thinning epoch."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    manager = recipe.manager()
    manager.attach(model, opt, steps_per_epoch=1, example_inputs=torch.zeros(1, 3, size, size))
    masked = copy.deepcopy(model).eval()
    manager.step()
    return masked, model.eval(), manager, opt


def _outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    out = model(x)
    out = out[1] if isinstance(out, tuple) else out  # YOLO eval: (pred, raw levels)
    return list(out) if isinstance(out, (list, tuple)) else [out]


@pytest.mark.parametrize("name", ["yolov3-tiny", "yolov3-spp", "yolov3", "rescat"])
def test_thinning_is_exact(name):
    torch.manual_seed(0)
    # half width: the same graph as the full model at a quarter of the weights
    model = ResCatNet() if name == "rescat" else build_model(name, nc=3, width_multiple=0.5)
    _randomize_norms(model)
    dense = sum(p.numel() for p in model.parameters())
    x = torch.rand(2, 3, 64, 64)
    masked, thinned, _, _ = _mask_then_thin(model, x, _recipe(0.5, ", round_to: 4"))
    with torch.no_grad():
        for a, b in zip(_outputs(masked, x), _outputs(thinned, x), strict=False):
            assert a.shape == b.shape
            assert (a - b).abs().max().item() < 1e-4
    assert sum(p.numel() for p in thinned.parameters()) < 0.45 * dense


def test_groups_follow_adds_concats_and_spp():
    model = build_model("yolov3-spp", nc=3, width_multiple=0.25)  # the layout of the full model, 1/16 the weights
    graph = trace_channel_groups(model, torch.zeros(1, 3, 64, 64))
    res = graph.group_of_output("model.6.0.cv2.conv")
    # the residual stage: the conv before it and every bottleneck's cv2 share one channel set
    assert {"model.5.conv", "model.6.0.cv2.conv", "model.6.7.cv2.conv"} <= set(res.producers) and not res.fixed
    up = model.model[23].conv.out_channels  # the upsampled branch comes first in layer 25's concat
    assert ("model.26.cv1.conv", up) in [(s.module, s.offset) for s in res.slices if s.role == "in"]
    spp = graph.group_of_output("model.12.cv1.conv")  # x and three max-pools of x, concatenated
    c = model.model[12].cv1.conv.out_channels
    assert sorted(s.offset for s in spp.slices if s.module == "model.12.cv2.conv") == [0, c, 2 * c, 3 * c]
    for j in range(3):
        assert "view" in graph.group_of_output(f"model.28.m.{j}").fixed  # Detect outputs are never removed


def test_optimizer_state_and_later_masks_follow_thinning():
    torch.manual_seed(0)
    model = ResCatNet()
    recipe = Recipe.load("""
modifiers:
  - !GMPruningModifier {params: __ALL_PRUNABLE__, init_sparsity: 0.5, final_sparsity: 0.5, mask_type: filter,
                        start_epoch: 0, end_epoch: 2, update_frequency: 1}
  - !GMPruningModifier {params: [c.0.weight], init_sparsity: 0.3, final_sparsity: 0.6, start_epoch: 0,
                        end_epoch: 3, update_frequency: 1}
""")
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    manager = recipe.manager()
    seen = []
    manager.subscribe("thinned", lambda plan: seen.append(sorted(plan.modules)))
    manager.attach(model, opt, steps_per_epoch=2)
    for _ in range(manager.max_epochs * 2):
        x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
        manager.step()
        for p in model.parameters():  # every optimizer buffer has its parameter's (thinned) shape
            buf = opt.state.get(p, {}).get("momentum_buffer")
            assert buf is None or buf.shape == p.shape
    manager.finalize()
    assert seen and "c.0" in seen[0] and model.c[0].weight.shape == (16, 20, 3, 3)
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in model.parameters()}
    w = model.c[0].weight
    assert abs(float((w == 0).float().mean()) - 0.6) < 0.01  # the unstructured mask followed the thinned layer


def test_global_bn_gamma_and_round_to():
    torch.manual_seed(0)
    model = build_model("yolov3-tiny", nc=3)
    _randomize_norms(model)
    _mask_then_thin(model, None, _recipe(0.5, ", round_to: 8, importance: bn_gamma, global: true"))
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and not name.startswith("model.20."):
            assert m.out_channels % 8 == 0 and m.out_channels >= 8, name


@pytest.mark.parametrize("mask_type", ["channel", "filter"])
@pytest.mark.parametrize(
    "tag",
    ["StructuredPruningModifier", "GMPruningModifier", "MagnitudePruningModifier", "GlobalMagnitudePruningModifier"],
)
def test_both_structures_on_every_pruning_modifier(tag, mask_type):
    """``mask_type: channel`` (input channels) and ``filter`` (output channels) on each modifier that takes
    them: the thinned non-YOLO CNN computes what the masked one did, and the right widths went."""
    torch.manual_seed(0)
    model = ResCatNet()
    _randomize_norms(model)
    masked, thinned, _, _ = _mask_then_thin(
        model,
        None,
        Recipe.load(f"""
modifiers:
  - !{tag} {{params: [c.0.weight], init_sparsity: 0.25, final_sparsity: 0.25, mask_type: {mask_type},
            start_epoch: 0, end_epoch: 0, update_frequency: 1}}
  - !LayerThinningModifier {{start_epoch: 1}}
"""),
        size=16,
    )
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        assert (masked(x) - thinned(x)).abs().max() < 1e-4
    if mask_type == "channel":  # c reads 16 (stem/a group) + 24 (b) channels; a quarter of each group goes
        assert (model.c[0].in_channels, model.c[0].out_channels) == (12 + 18, 32)
    else:  # a quarter of c's 32 filters, its BatchNorm entries and the linear head's inputs
        assert (model.c[0].in_channels, model.c[0].out_channels, model.head[2].in_features) == (40, 24, 24)


def test_round_to_that_leaves_no_channels():
    with pytest.raises(ConfigError, match="with round_to 16 leaves .* no channels"):
        _mask_then_thin(build_model("yolov3-tiny", nc=3), None, _recipe(0.9, ", round_to: 16"))


def test_bad_structured_recipes():
    model = build_model("yolov3-tiny", nc=3)
    with pytest.raises(ConfigError, match=r"model\.20\.m\.0\.weight.*cannot be removed.*view"):
        _mask_then_thin(model, None, _recipe(0.5, params="[model.20.m.0.weight]"))
    with pytest.raises(ConfigError, match=r"final_sparsity must be in \[0, 1\), got 1.0"):
        Recipe.load(
            "modifiers:\n  - !GMPruningModifier {params: __ALL_PRUNABLE__, init_sparsity: 0.1, "
            "final_sparsity: 1.0, mask_type: filter, start_epoch: 0, end_epoch: 1, update_frequency: 1}"
        )
    with pytest.raises(ConfigError, match="round_to applies to mask_type filter or channel"):
        Recipe.load(
            "modifiers:\n  - !GMPruningModifier {params: __ALL_PRUNABLE__, init_sparsity: 0.1, "
            "final_sparsity: 0.5, start_epoch: 0, end_epoch: 1, update_frequency: 1, round_to: 8}"
        )
    with pytest.raises(ConfigError, match="importance must be one of l1, l2, bn_gamma"):
        _recipe(0.5, ", importance: taylor")


BLOCKS_AFTER_THINNING = """
modifiers:
  - !GMPruningModifier {{params: __ALL_PRUNABLE__, init_sparsity: 0.3, final_sparsity: 0.3, mask_type: filter,
                        round_to: {round_to}, start_epoch: 0, end_epoch: 1, update_frequency: 1}}
  - !GMPruningModifier {{params: [model.13.conv.weight, model.14.conv.weight], init_sparsity: 0.05,
                        final_sparsity: 0.5, mask_type: [1, 4], start_epoch: {start}, end_epoch: 3,
                        update_frequency: 1}}
"""


@pytest.mark.parametrize("round_to", [1, 4])
def test_block_pruning_after_thinning_needs_widths_that_tile(round_to):
    """``[1, 4]`` blocks scored after thinning need every thinned width to divide by 4: with round_to 1 the
    recipe is refused when it is attached, naming both modifiers, instead of failing at the first block update
    after thinning; with round_to 4 it runs and the block modifier reaches its target."""
    model = build_model("yolov3-tiny", nc=3, width_multiple=0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    manager = Recipe.load(BLOCKS_AFTER_THINNING.format(round_to=round_to, start=2)).manager()
    if round_to == 1:
        with pytest.raises(
            ConfigError,
            match=r"<recipe>:6: .*mask_type \[1, 4\] still updates model\.13\.conv\.weight "
            r"after .* thins it at epoch 1.* round_to 1, not of 4",
        ):
            manager.attach(model, opt, steps_per_epoch=1, example_inputs=torch.zeros(1, 3, 64, 64))
        # block pruning that ends before thinning scores nothing afterwards: accepted
        early = BLOCKS_AFTER_THINNING.format(round_to=1, start=0).replace("end_epoch: 3", "end_epoch: 1")
        Recipe.load(early).manager().attach(
            build_model("yolov3-tiny", nc=3, width_multiple=0.5), None, 1, example_inputs=torch.zeros(1, 3, 64, 64)
        )
        return
    manager.attach(model, opt, steps_per_epoch=1, example_inputs=torch.zeros(1, 3, 64, 64))
    for _ in range(4):
        opt.step()
        manager.step()
    manager.finalize()
    w = model.model[13].conv.weight
    assert w.shape[0] % 4 == 0 and w.shape[1] % 4 == 0
    assert float((w == 0).float().mean()) == pytest.approx(0.5, abs=0.01)


class Flat(nn.Module):
    """A conv whose whole feature map is flattened into a linear layer: its channels cannot go."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 2)

    def forward(self, x):
        return self.fc(self.conv(x).flatten(1))


def test_filter_mask_on_a_group_that_cannot_be_thinned():
    with pytest.raises(
        ConfigError, match=r"conv\.weight.*channel group \d+ \(8 channels, produced by conv\).*" r"flatten\(\)"
    ):
        _mask_then_thin(Flat(), None, _recipe(0.5, params="[conv.weight]"), size=4)
    # __ALL_PRUNABLE__ skips it instead; only the (fixed) linear output remains, so nothing is pruned
    model = Flat()
    _mask_then_thin(model, None, _recipe(0.5), size=4)
    assert model.conv.out_channels == 8


def test_thinning_after_qat_start_is_refused():
    with pytest.raises(ConfigError, match="after quantization-aware training starts"):
        Recipe.load("""
modifiers:
  - !GMPruningModifier {params: __ALL_PRUNABLE__, init_sparsity: 0.1, final_sparsity: 0.5, mask_type: filter,
                        start_epoch: 0, end_epoch: 3, update_frequency: 1}
  - !QuantizationModifier {start_epoch: 2}
""").manager().attach(ResCatNet(), None, steps_per_epoch=1)


# -- a YOLO training run that thins, then QAT; resumed mid-pruning and just after thinning ---------------------
RUN_RECIPE = """
modifiers:
  - !EpochRangeModifier {start_epoch: 0, end_epoch: 4}
  - !GMPruningModifier {params: __ALL_PRUNABLE__, init_sparsity: 0.1, final_sparsity: 0.5, mask_type: filter,
                        round_to: 2, start_epoch: 0, end_epoch: 2, update_frequency: 0.5}
  - !QuantizationModifier {start_epoch: 3}
"""


@pytest.fixture(scope="module")
def shapes(shapes_data) -> dict:
    (shapes_data["root"] / "recipe.yaml").write_text(RUN_RECIPE)
    return {**shapes_data, "recipe": str(shapes_data["root"] / "recipe.yaml")}


def _common(shapes: dict, project) -> dict:
    return dict(
        cfg=shapes["cfg"],
        data=shapes["data"],
        recipe=shapes["recipe"],
        project=str(project),
        img_size=64,
        batch_size=4,
        workers=0,
        device="cpu",
        noplots=True,
        tensorboard=False,
    )


@pytest.fixture(scope="module")
def thinned_run(shapes, tmp_path_factory):
    from sparseyolo.engine.trainer import train

    project = tmp_path_factory.mktemp("runs")
    return train(name="ref", **_common(shapes, project))


def test_training_thins_then_resumes_exactly(shapes, thinned_run, tmp_path):
    from sparseyolo.engine.setup import TrainConfig
    from sparseyolo.engine.trainer import Trainer, train
    from sparseyolo.models.checkpoint import load_checkpoint, model_from_checkpoint

    common = _common(shapes, tmp_path)
    ref = load_checkpoint(thinned_run / "weights/last.pt")
    widths = ref["model_yaml"]["widths"]
    assert widths["model.0.conv"] == [3, 4]  # 8 channels at quarter width, half removed
    model = model_from_checkpoint(ref)
    dense = build_model(shapes["cfg"], nc=3)
    assert model.flops(416) < 0.5 * dense.flops(416)
    # killed mid-pruning (after epoch 0), and just after thinning: the schedule ends at epoch 2.0,
    # i.e. at the last step of epoch index 1, so that epoch's checkpoint is the first thinned one
    for stop, thinned in ((0, False), (1, True)):
        t = Trainer(TrainConfig(name=f"cut{stop}", **common))
        t.register_hooks([stop_after_epoch(stop)])
        with pytest.raises(KeyboardInterrupt):
            t.train()
        cut = tmp_path / f"cut{stop}" / "weights/last.pt"
        assert load_checkpoint(cut)["epoch"] == stop
        assert bool(load_checkpoint(cut)["model_yaml"].get("widths")) == thinned
        train(resume=str(cut), workers=0, device="cpu")
        got = load_checkpoint(cut)
        assert got["model_yaml"]["widths"] == widths
        for name, tensor in ref["model"].items():
            assert torch.equal(tensor, got["model"][name]), f"resumed after epoch {stop}: {name} differs"


def test_cli_works_from_a_thinned_checkpoint(shapes, thinned_run, tmp_path):
    """val, export (QDQ int8 of the thinned model), the ONNX file's own val, detect and a further recipe."""
    import subprocess
    import sys

    import onnx

    best = thinned_run / "weights/best.pt"

    def cli(*args: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "sparseyolo", *args], capture_output=True, text=True, timeout=300, cwd=tmp_path
        )
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout + out.stderr

    assert "mAP50" in cli("val", "--weights", str(best), "--data", shapes["data"], "--img", "64", "--device", "cpu")
    cli("export", "--weights", str(best), "--img-size", "96", "96")
    onnx_file = best.with_suffix(".onnx")
    convs = [n for n in onnx.load(onnx_file).graph.node if n.op_type == "Conv"]
    assert convs and any(n.op_type == "QuantizeLinear" for n in onnx.load(onnx_file).graph.node)
    assert "mAP50" in cli("val", "--weights", str(onnx_file), "--data", shapes["data"], "--img", "96")
    images = str(Path(shapes["data"]).parent / "images" / "val")
    cli(
        "detect",
        "--weights",
        str(best),
        "--source",
        images,
        "--img",
        "64",
        "--device",
        "cpu",
        "--project",
        str(tmp_path),
        "--name",
        "det",
    )
    assert list((tmp_path / "det").glob("*.jpg"))
    # a further recipe on the thinned model: unstructured pruning of its (smaller) layers
    (tmp_path / "more.yaml").write_text(
        "modifiers:\n  - !GMPruningModifier {params: __ALL_PRUNABLE__, init_sparsity: 0.5, final_sparsity: 0.5, "
        "start_epoch: 0, end_epoch: 1, update_frequency: 1}\n"
    )
    cli(
        "train",
        "--weights",
        str(best),
        "--data",
        shapes["data"],
        "--img",
        "64",
        "--batch-size",
        "4",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--recipe",
        str(tmp_path / "more.yaml"),
        "--project",
        str(tmp_path),
        "--name",
        "more",
        "--noval",
        "--noplots",
        "--no-tensorboard",
    )
    from sparseyolo.models.checkpoint import load_checkpoint

    more = load_checkpoint(tmp_path / "more/weights/last.pt")
    assert more["model_yaml"]["widths"] == load_checkpoint(best)["model_yaml"]["widths"]
    w = more["model"]["model.13.conv.weight"]
    assert abs(float((w == 0).float().mean()) - 0.5) < 0.01


def test_batchnorm_l1_drives_gammas_down():
    def run(recipe_extra: str) -> float:
        torch.manual_seed(0)
        model = ResCatNet()
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        manager = Recipe.load(
            "modifiers:\n  - !EpochRangeModifier {start_epoch: 0, end_epoch: 2}\n" + recipe_extra
        ).manager()
        manager.attach(model, opt, steps_per_epoch=5)
        for _ in range(10):
            x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad()
            manager.step()
        return float(sum(m.weight.detach().abs().sum() for m in model.modules() if isinstance(m, nn.BatchNorm2d)))

    plain = run("")
    slim = run("  - !BatchNormL1Modifier {penalty: 0.05, start_epoch: 0, end_epoch: 2}\n")
    assert slim < plain - 0.05 * 10 * 0.05 * 88 * 0.5  # at least half the penalty's pull on 88 gammas


def test_cli_darknet_export_writes_thinned_filter_counts(tmp_path):
    import subprocess
    import sys

    from sparseyolo.models.checkpoint import save_checkpoint
    from sparseyolo.models.weights import load_model

    model = build_model("yolov3-tiny", nc=3)
    _mask_then_thin(model, None, _recipe(0.5, ", round_to: 8"))
    model.record_widths()
    save_checkpoint(tmp_path / "yolov3-tiny.pt", model=model, names=model.names, epoch=0)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "sparseyolo",
            "export",
            "--weights",
            str(tmp_path / "yolov3-tiny.pt"),
            "--format",
            "darknet",
            "--img",
            "416",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "decodes boxes as trained here ('v5')" in out.stderr  # written as Darknet's new_coords=1 form
    cfg = tmp_path / "yolov3-tiny.cfg"
    filters = [int(line.split("=")[1]) for line in cfg.read_text().splitlines() if line.startswith("filters=")]
    assert filters[:3] == [model.model[0].conv.out_channels, model.model[2].conv.out_channels, 32] == [8, 16, 32]
    back, _ = load_model(tmp_path / "yolov3-tiny.weights", cfg=str(cfg))
    model.eval().export_raw = True
    back.eval().export_raw = True
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert max((a - b).abs().max().item() for a, b in zip(model(x), back(x), strict=False)) < 1e-4
    assert back.decode == model.decode == "v5"  # and so the decoded boxes match too


LATER_THINNING = """
modifiers:
  - !EpochRangeModifier {{start_epoch: 0, end_epoch: 4}}
  - !StructuredPruningModifier {{params: [a.0.weight], init_sparsity: 0.25, final_sparsity: 0.25,
                                start_epoch: 0, end_epoch: 0, update_frequency: 1}}
  - !StructuredPruningModifier {{params: [c.0.weight], init_sparsity: 0.05, final_sparsity: 0.5,
                                start_epoch: 1.5, end_epoch: 2.5, update_frequency: 0.5}}
  - !LayerThinningModifier {{start_epoch: 1, update_epochs: [3], structure_type: filter{extra}}}
"""


def test_layer_thinning_at_start_and_update_epochs():
    """SparseML's ``LayerThinningModifier`` keys: it thins at ``start_epoch`` and at each of ``update_epochs``;
    a schedule that ends between them waits for the next one (its masks hold meanwhile), and a schedule that
    starts after the first thinning chooses among the thinned model's channels."""
    torch.manual_seed(0)
    model = ResCatNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    manager = Recipe.load(LATER_THINNING.format(extra="")).manager()
    thinned_at: list[float] = []
    manager.subscribe("thinned", lambda **_: thinned_at.append(manager.epoch))
    manager.attach(model, opt, steps_per_epoch=2, example_inputs=torch.zeros(1, 3, 16, 16))
    widths = []
    for _ in range(manager.max_epochs * 2):
        opt.step()
        manager.step()
        widths.append((model.stem[0].out_channels, model.c[0].out_channels))
    manager.finalize()
    assert thinned_at == [1.0, 3.0]
    # the stem / a / residual group loses a quarter at epoch 1; c keeps 32 filters (half masked) until epoch 3
    assert widths[1] == widths[4] == (12, 32) and (model.stem[0].out_channels, model.c[0].out_channels) == (12, 16)


def test_a_thinning_inside_another_structured_schedule_is_refused():
    """Thinning cuts the model under every structured schedule; one still choosing channels then would
    lose its choice, so the recipe is refused when it is attached, naming both."""
    overlapping = LATER_THINNING.format(extra="").replace(
        "start_epoch: 1.5, end_epoch: 2.5", "start_epoch: 0.5, end_epoch: 2"
    )
    with pytest.raises(
        ConfigError,
        match=r"<recipe>:6: !StructuredPruningModifier chooses channels from epoch 0\.5 to 2, "
        r"but the model is thinned at epoch 1 \(after !StructuredPruningModifier at <recipe>:4 ends\)",
    ):
        Recipe.load(overlapping).manager().attach(ResCatNet(), None, 2, example_inputs=torch.zeros(1, 3, 16, 16))


def test_layer_thinning_strict_and_dependency_map_names():
    model = ResCatNet()
    nothing_ends = (
        LATER_THINNING.format(extra="")
        .replace("update_epochs: [3]", "update_epochs: []")
        .replace("start_epoch: 1, update_epochs", "start_epoch: 0.5, update_epochs")
    )
    nothing_ends = nothing_ends.replace("end_epoch: 0, update_frequency: 1", "end_epoch: 1, update_frequency: 1")
    with pytest.raises(
        ConfigError, match=r"<recipe>:8: .*no filter or channel pruning ends by its epochs.*strict: false"
    ):
        Recipe.load(nothing_ends).manager().attach(model, None, 2, example_inputs=torch.zeros(1, 3, 16, 16))
    relaxed = nothing_ends.replace("structure_type: filter", "structure_type: filter, strict: false")
    Recipe.load(relaxed).manager().attach(ResCatNet(), None, 2, example_inputs=torch.zeros(1, 3, 16, 16))
    bad_map = LATER_THINNING.format(extra=", param_group_dependency_map: {'a.0.weight,nope.weight': [c.0.weight]}")
    with pytest.raises(ConfigError, match=r"<recipe>:8: params entry 'nope\.weight' matches no parameter"):
        Recipe.load(bad_map).manager().attach(ResCatNet(), None, 2, example_inputs=torch.zeros(1, 3, 16, 16))
    with pytest.raises(ConfigError, match="structure_type must be 'filter' or 'channel'"):
        Recipe.load(LATER_THINNING.format(extra="").replace("structure_type: filter", "structure_type: block"))
