"""Loading SparseML recipes: sources, variables, overrides, structure errors, serialisation."""

import textwrap

import pytest

from sparseyolo.recipe import Recipe, parse_recipe_args
from sparseyolo.recipe.modifiers import GMPruningModifier, LearningRateModifier, QuantizationModifier
from sparseyolo.utils.errors import ConfigError


def _schedule(recipe):
    return [(m.tag, m.start_epoch, m.end_epoch, sorted(m.to_dict().items(), key=str)) for m in recipe.modifiers]


# Laid out like SparseML's published recipes: a licence comment, YAML front matter whose variables are
# anchors (one key named unlike its anchor), modifier groups, then Markdown.
SPARSEML_STYLE = """\
<!--
Licensed under the Apache License, Version 2.0
-->

---
num_epochs: &num_epochs 6
init_lr: &init_lr 0.0032

pruning_start_epoch: &pruning_start_epoch 0
pruning_end_epoch: &pruning_end_epoch 3
update_frequency: &pruning_update_frequency 0.5
init_sparsity: &init_sparsity 0.05
mask_type: &mask_type [1, 4]
quantization_start_epoch: &quantization_start_epoch 5

training_modifiers:
  - !EpochRangeModifier
    start_epoch: 0.0
    end_epoch: *num_epochs

  - !SetLearningRateModifier
    start_epoch: 0.0
    learning_rate: *init_lr

  - !LearningRateModifier
    constant_logging: False
    end_epoch: *quantization_start_epoch
    init_lr: *init_lr
    lr_class: StepLR
    lr_kwargs: {
        'step_size': 1,
        'gamma': 0.985
      }
    start_epoch: *pruning_end_epoch
    update_frequency: -1.0

  - !SetWeightDecayModifier
    start_epoch: *pruning_end_epoch
    weight_decay: 0.0

pruning_modifiers:
  - !GMPruningModifier
    params:
      - model.2.conv.weight
      - model.4.conv.weight
    init_sparsity: *init_sparsity
    final_sparsity: 0.4
    mask_type: *mask_type
    start_epoch: *pruning_start_epoch
    end_epoch: *pruning_end_epoch
    update_frequency: *pruning_update_frequency

  - !GMPruningModifier
    params:
      - model.13.conv.weight
    init_sparsity: *init_sparsity
    final_sparsity: 0.8
    mask_type: *mask_type
    start_epoch: *pruning_start_epoch
    end_epoch: *pruning_end_epoch
    update_frequency: *pruning_update_frequency

quantization_modifiers:
  - !QuantizationModifier
    start_epoch: *quantization_start_epoch
    submodules:
      - model.0
      - model.1
---

# A SparseML-style recipe

Everything after the front matter is documentation: `epochs: 3` here is not a variable.
"""


@pytest.fixture
def sparseml_style(tmp_path):
    path = tmp_path / "sparseml-style.md"
    path.write_text(SPARSEML_STYLE)
    return path


def test_sparseml_style_recipe_loads(sparseml_style):
    recipe = Recipe.load(sparseml_style)
    assert recipe.variables["num_epochs"] == 6 and recipe.variables["update_frequency"] == 0.5
    assert recipe.max_epochs == 6
    assert [m.tag for m in recipe.modifiers] == [
        "EpochRangeModifier",
        "SetLearningRateModifier",
        "LearningRateModifier",
        "SetWeightDecayModifier",
        "GMPruningModifier",
        "GMPruningModifier",
        "QuantizationModifier",
    ]
    lr = next(m for m in recipe.modifiers if isinstance(m, LearningRateModifier))
    assert (lr.lr_class, lr.start_epoch, lr.end_epoch, lr.init_lr) == ("StepLR", 3, 5, 0.0032)
    assert lr.lr_kwargs == {"step_size": 1, "gamma": 0.985} and lr.ignored == {"constant_logging": False}
    pruning = [m for m in recipe.modifiers if isinstance(m, GMPruningModifier)]
    assert [m.final_sparsity for m in pruning] == [0.4, 0.8]
    assert all((m.start_epoch, m.end_epoch, m.update_frequency) == (0, 3, 0.5) for m in pruning)
    assert all(m.mask.kind == "block" and m.mask.block == (1, 4) for m in pruning)
    quant = next(m for m in recipe.modifiers if isinstance(m, QuantizationModifier))
    assert quant.start_epoch == 5 and quant.submodules == ["model.0", "model.1"]


@pytest.mark.real_data
def test_published_pruned_recipe_loads_unmodified(shared_dir):
    recipe = Recipe.load(shared_dir / "recipes/sparseml/yolov3-spp.pruned.md")
    assert recipe.variables["num_epochs"] == 300
    assert recipe.variables["prune_high_target_sparsity"] == 0.85
    assert recipe.max_epochs == 300
    pruning = [m for m in recipe.modifiers if isinstance(m, GMPruningModifier)]
    assert len(pruning) == 4
    assert [m.final_sparsity for m in pruning] == [0.4, 0.75, 0.8, 0.85]
    assert all((m.start_epoch, m.end_epoch, m.update_frequency) == (0, 80, 0.5) for m in pruning)
    assert "model.28.m.0.weight" in pruning[1].params
    assert sum(len(m.params) for m in pruning) == 75


@pytest.mark.real_data
def test_published_test_recipe_loads_unmodified(shared_dir):
    recipe = Recipe.load(str(shared_dir / "recipes/sparseml/yolov3-spp.test.md"))
    assert recipe.max_epochs == 5
    lr = next(m for m in recipe.modifiers if isinstance(m, LearningRateModifier))
    assert (lr.lr_class, lr.start_epoch, lr.end_epoch, lr.init_lr) == ("StepLR", 2, 4, 0.0032)
    assert lr.lr_kwargs == {"step_size": 1, "gamma": 0.985}
    assert lr.ignored == {"constant_logging": False}
    prune = [m for m in recipe.modifiers if isinstance(m, GMPruningModifier)]
    assert all(m.mask.kind == "block" and m.mask.block == (1, 4) for m in prune)
    quant = next(m for m in recipe.modifiers if isinstance(m, QuantizationModifier))
    assert quant.start_epoch == 4 and quant.submodules[:2] == ["model.0", "model.1"] and len(quant.submodules) == 28
    # serialised and read back, with overrides: the same schedule
    recipe = Recipe.load(shared_dir / "recipes/sparseml/yolov3-spp.test.md", args="num_epochs=3,pruning_end_epoch=1")
    again = Recipe.load(recipe.to_yaml())
    assert _schedule(again) == _schedule(recipe)
    assert again.max_epochs == recipe.max_epochs == 4  # the QAT start (epoch 4) is the last event


def test_overrides_reach_every_alias(sparseml_style):
    recipe = Recipe.load(sparseml_style, args="num_epochs=8,pruning_end_epoch=2,quantization_start_epoch=7")
    spans = [(m.tag, m.start_epoch, m.end_epoch) for m in recipe.modifiers]
    assert spans == [
        ("EpochRangeModifier", 0, 8),
        ("SetLearningRateModifier", 0, -1),
        ("LearningRateModifier", 2, 7),
        ("SetWeightDecayModifier", 2, -1),
        ("GMPruningModifier", 0, 2),
        ("GMPruningModifier", 0, 2),
        ("QuantizationModifier", 7, -1),
    ]
    assert recipe.max_epochs == 8
    recipe = Recipe.load(sparseml_style, args='{"num_epochs": 100, "init_lr": 0.01}')
    assert recipe.max_epochs == 100
    assert recipe.modifiers[1].learning_rate == 0.01 and recipe.modifiers[2].init_lr == 0.01
    recipe = Recipe.load(sparseml_style, args={"update_frequency": 0.25, "mask_type": [2, 1]})
    pruning = [m for m in recipe.modifiers if isinstance(m, GMPruningModifier)]
    assert all(m.update_frequency == 0.25 for m in pruning)  # the key, not the anchor's name
    assert all(m.mask.kind == "block" and m.mask.block == (2, 1) for m in pruning)


def test_unknown_override_lists_variables(sparseml_style):
    with pytest.raises(ConfigError, match=r"'num_epoch' is not a variable.*num_epochs.*pruning_end_epoch"):
        Recipe.load(sparseml_style, args="num_epoch=3")


def test_parse_recipe_args_forms():
    assert parse_recipe_args("a=3,b=0.5,c=[1, 4],d=2:4,e=true") == {
        "a": 3,
        "b": 0.5,
        "c": [1, 4],
        "d": "2:4",
        "e": True,
    }
    assert parse_recipe_args('{"num_epochs": 10}') == {"num_epochs": 10}
    assert parse_recipe_args(None) == {} and parse_recipe_args("") == {}
    with pytest.raises(ConfigError, match="key=value"):
        parse_recipe_args("num_epochs")


def test_unknown_tag_names_line_and_close_match():
    text = "a: 1\nmodifiers:\n  - !EpochRangeModifier {start_epoch: 0, end_epoch: 2}\n  - !GMPrunningModifier\n    params: [w]\n"
    with pytest.raises(
        ConfigError, match=r"<recipe>:4: unknown modifier tag !GMPrunningModifier; did you mean !GMPruningModifier"
    ):
        Recipe.load(text)


def test_unknown_key_names_line_and_valid_keys(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(
        textwrap.dedent("""\
        modifiers:
          - !GMPruningModifier
            params: [w]
            init_sparsity: 0.05
            final_sparsity: 0.5
            start_epoch: 0
            end_epoch: 2
            update_frequncy: 0.5
        """)
    )
    with pytest.raises(ConfigError) as info:
        Recipe.load(path)
    msg = str(info.value)
    assert f"{path}:8: unknown key 'update_frequncy'" in msg
    assert "did you mean 'update_frequency'" in msg and "Valid keys:" in msg and "mask_type" in msg


def test_markdown_line_numbers_survive_the_comment_header(tmp_path):
    path = tmp_path / "r.md"
    path.write_text("<!--\nlicence\n-->\n\n---\nn: 2\nmodifiers:\n  - !Nope {}\n---\n# Title\n")
    with pytest.raises(ConfigError, match=r"r.md:8: unknown modifier tag !Nope"):
        Recipe.load(str(path))


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        Recipe.load(str(tmp_path / "missing.md"))
    with pytest.raises(ConfigError, match=r"<recipe>:3: invalid YAML"):
        Recipe.load("a: 1\nb: [1,\n")
    with pytest.raises(ConfigError, match="no modifiers"):
        Recipe.load("a: 1\nb: 2\n")
    with pytest.raises(ConfigError, match="must be tagged modifiers"):
        Recipe.load("modifiers:\n  - {start_epoch: 0}\n")


def test_zoo_stub_unknown_is_an_error():
    with pytest.raises(ConfigError, match="unknown recipe stub 'zoo:does/not/exist'"):
        Recipe.load("zoo:does/not/exist")


def test_eval_variables_and_modifier_expressions():
    text = textwrap.dedent("""\
        total: eval(warm + prune + 1)
        warm: 1
        prune: 2
        modifiers:
          - !EpochRangeModifier {start_epoch: 0, end_epoch: eval(total)}
          - !GMPruningModifier
            params: [w]
            init_sparsity: 0.05
            final_sparsity: eval(0.5 + 0.25)
            start_epoch: eval(warm)
            end_epoch: eval(warm + prune)
            update_frequency: 0.5
        """)
    recipe = Recipe.load(text, args={"prune": 3})
    assert recipe.variables == {"total": 5, "warm": 1, "prune": 3}
    assert (recipe.modifiers[1].start_epoch, recipe.modifiers[1].end_epoch) == (1, 4)
    assert recipe.modifiers[1].final_sparsity == 0.75


def test_staged_recipe_runs_stages_one_after_another():
    text = textwrap.dedent("""\
        lr: 0.01
        stage_prune:
          prune_end: 2
          prune_modifiers:
            - !GMPruningModifier
              params: __ALL_PRUNABLE__
              init_sparsity: 0.05
              final_sparsity: 0.5
              start_epoch: 0
              end_epoch: eval(prune_end)
              update_frequency: 0.5
            - !SetLearningRateModifier {start_epoch: 0, learning_rate: eval(lr)}
        stage_finetune:
          ft_epochs: 3
          modifiers:
            - !EpochRangeModifier {start_epoch: 0, end_epoch: eval(ft_epochs)}
            - !SetLearningRateModifier {start_epoch: 1, learning_rate: eval(lr / 10)}
        """)
    recipe = Recipe.load(text, args="ft_epochs=4")
    spans = [(m.tag, m.start_epoch, m.end_epoch) for m in recipe.modifiers]
    assert spans == [
        ("GMPruningModifier", 0, 2),
        ("SetLearningRateModifier", 0, -1),
        ("EpochRangeModifier", 2, 6),
        ("SetLearningRateModifier", 3, -1),
    ]
    assert recipe.modifiers[3].learning_rate == pytest.approx(0.001)
    assert recipe.max_epochs == 6
    # stage variables can also be addressed as stage.var
    assert Recipe.load(text, args={"stage_finetune.ft_epochs": 1}).max_epochs == 3
    again = Recipe.load(recipe.to_yaml())
    assert _schedule(again) == _schedule(recipe)


def test_to_yaml_round_trip(sparseml_style):
    recipe = Recipe.load(sparseml_style, args="num_epochs=4,pruning_end_epoch=1")
    text = recipe.to_yaml()
    assert "!GMPruningModifier" in text and "!QuantizationModifier" in text
    again = Recipe.load(text)
    assert _schedule(again) == _schedule(recipe)
    assert again.max_epochs == recipe.max_epochs == 5  # the QAT start (epoch 5) is the last event


def test_yaml_anchor_on_a_list_and_merge_keys():
    text = textwrap.dedent("""\
        layers: &layers [a.weight, b.weight]
        common: &common {init_sparsity: 0.1, start_epoch: 0, end_epoch: 1, update_frequency: 0.5}
        modifiers:
          - !GMPruningModifier
            <<: *common
            params: *layers
            final_sparsity: 0.5
        """)
    recipe = Recipe.load(text, args={"layers": ["c.weight"]})
    mod = recipe.modifiers[0]
    assert mod.params == ["c.weight"] and mod.init_sparsity == 0.1 and mod.end_epoch == 1


def test_invalid_values_are_reported():
    base = "modifiers:\n  - !GMPruningModifier {params: [w], init_sparsity: 0.05, start_epoch: 0, end_epoch: 2, update_frequency: 0.5, %s}\n"
    with pytest.raises(ConfigError, match=r"<recipe>:2: !GMPruningModifier: final_sparsity must be in \[0, 1\)"):
        Recipe.load(base % "final_sparsity: 1.5")
    with pytest.raises(ConfigError, match="inter_func 'quadratic'"):
        Recipe.load(base % "final_sparsity: 0.5, inter_func: quadratic")
    with pytest.raises(ConfigError, match="unsupported mask_type"):
        Recipe.load(base % "final_sparsity: 0.5, mask_type: [1, 4, 4]")
    with pytest.raises(ConfigError, match="above what mask_type '2:4' allows"):
        Recipe.load(base % "final_sparsity: 0.75, mask_type: 2:4")
    with pytest.raises(ConfigError, match="missing required key"):
        Recipe.load("modifiers:\n  - !SetLearningRateModifier {start_epoch: 0}\n")
    with pytest.raises(ConfigError, match="update_frequency must be -1"):
        Recipe.load(
            "modifiers:\n  - !LearningRateModifier {lr_class: StepLR, lr_kwargs: {step_size: 1, gamma: 0.9}, init_lr: 0.1, start_epoch: 0, update_frequency: 1}\n"
        )


def test_zoo_stubs_and_builtin_names(tmp_path, monkeypatch, sparseml_style):
    from sparseyolo.recipe import loader

    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "tiny-prune.yaml").write_text(
        "n: 2\nmodifiers:\n  - !EpochRangeModifier {start_epoch: 0, end_epoch: eval(n)}\n"
    )
    zoo = tmp_path / "zoo.yaml"
    zoo.write_text(
        textwrap.dedent(f"""\
        weights: {{a: b}}
        recipes:
          yolov3-spp/pruned: {sparseml_style}
          tiny: {{path: recipes/tiny-prune.yaml}}
        """)
    )
    monkeypatch.setattr(loader, "CONFIG_DIR", tmp_path)
    monkeypatch.setattr(loader, "RECIPE_DIR", recipes)
    monkeypatch.setattr(loader, "ZOO_FILE", zoo)
    assert Recipe.load("zoo:yolov3-spp/pruned", args="num_epochs=7,pruning_end_epoch=2").max_epochs == 7
    assert Recipe.load("zoo:tiny").max_epochs == 2
    assert Recipe.load("tiny-prune", args={"n": 5}).max_epochs == 5  # built-in name
    with pytest.raises(ConfigError, match="did you mean yolov3-spp/pruned"):
        Recipe.load("zoo:yolov3-spp/prunned")
    zoo.write_text("recipes: [not, a, mapping]\n")  # read tolerantly: no stubs, still a clear error
    with pytest.raises(ConfigError, match="unknown recipe stub"):
        Recipe.load("zoo:tiny2")


def test_zoo_stub_with_url_downloads_through_loopback(tmp_path, monkeypatch):
    import functools
    import hashlib
    import http.server
    import threading

    served = tmp_path / "served"
    served.mkdir()
    body = "n: 3\nmodifiers:\n  - !EpochRangeModifier {start_epoch: 0, end_epoch: eval(n)}\n"
    (served / "remote.yaml").write_text(body)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/remote.yaml"
        zoo = tmp_path / "zoo.yaml"
        zoo.write_text(
            f"recipes:\n  remote/test: {{url: '{url}', sha256: {hashlib.sha256(body.encode()).hexdigest()}}}\n"
        )
        monkeypatch.setenv("SPARSEYOLO_ZOO_FILE", str(zoo))
        monkeypatch.setenv("SPARSEYOLO_CACHE", str(tmp_path / "cache"))
        assert Recipe.load("zoo:remote/test", args="n=4").max_epochs == 4
        assert list((tmp_path / "cache" / "recipes").rglob("remote.yaml"))
    finally:
        server.shutdown()
        server.server_close()


def test_a_mapping_holding_modifiers_is_a_stage_whatever_its_name():
    """SparseML's rule: `pruning_phase: {pruning_modifiers: [...]}` is a stage, never a silently ignored variable."""
    from sparseyolo.recipe import Recipe

    text = (
        "pruning_phase:\n  modifiers:\n    - !EpochRangeModifier {start_epoch: 0, end_epoch: 2}\n"
        "qat_phase:\n  modifiers:\n    - !EpochRangeModifier {start_epoch: 0, end_epoch: 3}\n"
        "lr_kwargs: {step_size: 1}\n"
    )
    manager = Recipe.load(text).manager()
    assert manager.max_epochs == 5 and len(manager.modifiers) == 2


def test_gradual_pruning_defaults_to_sparsemls_cubic_schedule():
    from sparseyolo.recipe import Recipe

    text = "modifiers:\n  - !GMPruningModifier {params: [w], init_sparsity: 0.05, final_sparsity: 0.5, start_epoch: 0, end_epoch: 2, update_frequency: 1}\n"
    (modifier,) = Recipe.load(text).manager().modifiers
    assert modifier.inter_func == "cubic"


def test_shipped_tiny_pruned_quantized_recipe_freezes_bn_and_observers_only_when_asked():
    """Its QAT keeps BatchNorm statistics and int8 ranges updating to the end; --recipe-args can freeze them."""

    def qat(args=None):
        (q,) = [m for m in Recipe.load("yolov3-tiny.pruned_quantized", args=args).manager().modifiers
                if isinstance(m, QuantizationModifier)]  # fmt: skip
        return q.freeze_bn_stats_epoch, q.disable_quantization_observer_epoch

    assert qat() == (None, None)
    assert qat("freeze_bn_stats_epoch=38,disable_observer_epoch=39") == (38, 39)


@pytest.mark.parametrize("name", ["yolov3-tiny.pruned", "yolov3-tiny.pruned_quantized"])
def test_shipped_tiny_pruning_recipes_share_one_schedule_shape_that_recipe_args_change(name):
    """SparseML's cubic schedule by default (#16's measurements); `pruning_inter_func=linear` reaches every pruner."""

    def shapes(args=None):
        return {
            m.inter_func for m in Recipe.load(name, args=args).manager().modifiers if isinstance(m, GMPruningModifier)
        }

    assert shapes() == {"cubic"}
    assert shapes("pruning_inter_func=linear") == {"linear"}
