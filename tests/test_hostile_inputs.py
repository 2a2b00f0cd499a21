"""Hostile files: recipes, archives, checkpoints and downloads built to hurt, each refused with one line.

- recipe ``eval(...)`` expressions that would use up CPU, memory or the stack (expressions.py bounds);
- tar archives whose links chain out of the destination, checked by our code with tarfile's
  ``filter="data"`` taken away (Python 3.10 before 3.10.12 has none);
- checkpoints / recipes naming a model method as the QAT fuse step, and state dicts of other shapes;
- downloads without a pinned checksum say that they are not verified (loopback HTTP server only);
- a missing part of the package fails loudly instead of being left out.

Nothing here reads ../shared or the network; everything is written under tmp_path.
"""

from __future__ import annotations

import io
import logging
import re
import tarfile
import traceback
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from sparseyolo.cli import main as cli_main
from sparseyolo.models import build_model
from sparseyolo.models.checkpoint import (
    load_checkpoint,
    load_state,
    model_from_checkpoint,
    save_checkpoint,
)
from sparseyolo.models.weights import load_zoo, resolve_weights, transfer_state
from sparseyolo.quantization import QATConfig, prepare_qat
from sparseyolo.recipe import Recipe, resolve_variables, restore_qat_structure
from sparseyolo.utils.downloads import download, safe_extract
from sparseyolo.utils.errors import ConfigError, DownloadError, WeightsError

OFFICIAL_TINY_SHA256 = "dccea06f59b781ec1234ddf8d1e94b9519a97f4245748a7d4db75d5b7080a42c"


@pytest.fixture
def cli(capfd):
    """``cli(*args) -> (exit code, stderr)`` through ``main()``; any exception is a traceback: a failure."""

    def call(*args) -> tuple[int, str]:
        capfd.readouterr()
        try:
            rc = cli_main.main([str(a) for a in args])
        except BaseException:
            pytest.fail(f"sparseyolo {' '.join(map(str, args))} raised:\n{traceback.format_exc()}")
        _, err = capfd.readouterr()
        return rc, err

    return call


def _one_line_error(rc: int, err: str, cmd: str) -> str:
    assert rc == 2, err
    lines = [line for line in err.splitlines() if line.startswith(f"sparseyolo {cmd}: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0][len(f"sparseyolo {cmd}: error: ") :]


# --- recipe expressions ----------------------------------------------------------------------------------
TOWER = "eval(((9**99)**99)**99)"
MINUSES = "eval(" + "-" * 3000 + "1)"


def _recipe(variable: str) -> str:
    return (
        f"num_epochs: {variable}\nmodifiers:\n  - !EpochRangeModifier\n    start_epoch: 0\n"
        f"    end_epoch: eval(num_epochs)\n"
    )


@pytest.mark.parametrize(
    "value, why",
    [
        (TOWER, r"9 \*\* 99 would have more than 256 bits"),
        (MINUSES, r"expression is 3001 characters long; recipe expressions are limited to 1000"),
        ("eval(" + "-" * 500 + "1)", r"nested more than 40 levels deep"),
        ("eval(" + "9" * 400 + " + 1)", r"is an integer of 1329 bits; recipe numbers are limited to 256 bits"),
        ("eval(round(5, -(10**9)))", r"rounding to more than 100 digits is not allowed"),
        ("eval(int(1e300) * 2)", r"is an integer of 997 bits"),
    ],
)
def test_recipe_expression_beyond_the_bounds_names_the_variable(value, why):
    with pytest.raises(ConfigError, match=rf"^<recipe>: variable 'num_epochs': .*{why}") as e:
        Recipe.load(_recipe(value))
    assert "\n" not in str(e.value) and len(str(e.value)) < 400


def test_recipe_expression_in_a_modifier_key_names_the_line_and_key():
    text = "modifiers:\n  - !EpochRangeModifier\n    start_epoch: 0\n    end_epoch: " + TOWER + "\n"
    with pytest.raises(ConfigError, match=r"^<recipe>:2 \(key 'end_epoch'\): 9 \*\* 99 would have more than 256"):
        Recipe.load(text)


def test_long_variable_chains_and_deep_yaml_are_refused():
    raw = {f"v{i}": f"eval(v{i + 1} + 1)" for i in range(3000)}
    raw["v3000"] = 1
    with pytest.raises(ConfigError, match=r"variable 'v100' ends a chain of more than 100 variables"):
        resolve_variables(raw)
    nested = "x: " + "[" * 3000 + "]" * 3000 + "\n" + _recipe("1").split("\n", 1)[1]
    with pytest.raises(ConfigError, match=r"<recipe>: invalid YAML: lists or mappings are nested too deeply"):
        Recipe.load(nested)


def test_recipe_expression_bounds_through_the_cli(cli, tmp_path):
    recipe = tmp_path / "r.yaml"
    for value, why in ((TOWER, "9 ** 99 would have more than 256 bits"), (MINUSES, "3001 characters long")):
        recipe.write_text(_recipe(value))
        # the recipe is read before the data: a missing data file is never reached
        rc, err = cli(
            "train",
            "--cfg",
            "yolov3-tiny",
            "--data",
            tmp_path / "none.yaml",
            "--recipe",
            recipe,
            "--project",
            tmp_path / "runs",
        )
        msg = _one_line_error(rc, err, "train")
        assert msg.startswith(f"{recipe}: variable 'num_epochs': ") and why in msg, msg


# --- archives ----------------------------------------------------------------------------------------------
def _link(name: str, target: str, hard: bool = False) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = (tarfile.LNKTYPE if hard else tarfile.SYMTYPE), target
    return info, None


def _file(name: str, data: bytes = b"owned\n") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _tar(path: Path, members) -> Path:
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


@pytest.fixture
def no_data_filter(monkeypatch):
    """Python 3.10 before 3.10.12 / 3.11 before 3.11.4: tarfile has no ``filter="data"``."""
    monkeypatch.delattr(tarfile, "data_filter", raising=False)


CHAINS = {
    # a -> . ; a/b -> .. (text: a/.. = the destination; really its parent) ; b/x lands beside it
    "member below a link": (
        [_link("a", "."), _link("a/b", ".."), _file("b/x")],
        r"refusing member 'a/b': its path passes through the link 'a'",
    ),
    "link through a link": (
        [_link("a", "."), _link("b", "a/.."), _file("c/y")],
        r"refusing link 'b' -> 'a/\.\.': its target passes through the link 'a'",
    ),
    "hardlink through a link": (
        [_link("a", "."), _link("h", "a/../x", hard=True)],
        r"refusing link 'h' -> 'a/\.\./x': its target passes through the link 'a'",
    ),
    "file of a link's name": (
        [_link("f", "."), _file("f")],
        r"refusing member 'f': the archive holds a link of the same name",
    ),
    "link named like a folder, other case": (
        [_link("D", "."), _file("d/x")],
        r"refusing member 'd/x': its path passes through the link 'D'",
    ),
}


@pytest.mark.parametrize("case", sorted(CHAINS))
def test_link_chains_are_refused_by_our_checks(case, tmp_path, no_data_filter):
    members, message = CHAINS[case]
    archive = _tar(tmp_path / "evil.tar", members)
    dest = tmp_path / "box" / "dest"
    with pytest.raises(DownloadError, match=rf"^{re.escape(str(archive))}: {message}"):
        safe_extract(archive, dest, progress=False)
    assert list(dest.iterdir()) == []  # every member is checked before anything is written
    assert sorted(p.name for p in (tmp_path / "box").iterdir()) == ["dest"]


def test_a_link_left_by_an_earlier_archive_cannot_be_extended(tmp_path, no_data_filter):
    dest = tmp_path / "box" / "dest"
    safe_extract(_tar(tmp_path / "one.tar", [_link("a", ".")]), dest, progress=False)  # inside: allowed
    second = _tar(tmp_path / "two.tar", [_link("a/b", ".."), _file("b/x")])
    with pytest.raises(DownloadError, match=r"refusing link 'a/b' -> '\.\.' pointing outside"):
        safe_extract(second, dest, progress=False)
    assert not (tmp_path / "box" / "b").exists() and not (tmp_path / "box" / "x").exists()


def test_plain_links_inside_still_extract(tmp_path, no_data_filter):
    archive = _tar(
        tmp_path / "ok.tar",
        [
            _file("d/a.txt", b"alpha"),
            _link("d/link", "a.txt"),
            _link("e/up", "../d/a.txt"),
            _link("hard", "d/a.txt", hard=True),
        ],
    )
    out = safe_extract(archive, tmp_path / "out", progress=False)
    assert [(out / p).read_bytes() for p in ("d/link", "e/up", "hard")] == [b"alpha"] * 3


def test_zip_links_are_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        link = zipfile.ZipInfo("a")
        link.external_attr = 0o120777 << 16  # a symlink entry whose "data" is its target
        zf.writestr(link, ".")
        zf.writestr("a/x", "owned")
    with pytest.raises(DownloadError, match=r"refusing symlink member 'a'"):
        safe_extract(archive, tmp_path / "dest", progress=False)
    assert not (tmp_path / "dest" / "a").exists()


# --- QAT fuse names from files -----------------------------------------------------------------------------
def _small(nc: int = 2):
    return build_model("yolov3-tiny", nc=nc, width_multiple=0.125, names=[f"n{i}" for i in range(nc)])


def test_recipe_fuse_must_be_a_known_mode(cli, tmp_path):
    recipe = tmp_path / "q.yaml"
    recipe.write_text("modifiers:\n  - !QuantizationModifier\n    start_epoch: 0\n    model_fuse_fn_name: train\n")
    msg = (
        "q.yaml:4: !QuantizationModifier: model_fuse_fn_name must be one of 'conv_bn_relus', 'no_fuse', "
        "got 'train' (naming a model method is not supported)"
    )
    with pytest.raises(ConfigError, match=re.escape(msg)):
        Recipe.load(recipe)
    rc, err = cli(
        "train",
        "--cfg",
        "yolov3-tiny",
        "--data",
        tmp_path / "none.yaml",
        "--recipe",
        recipe,
        "--project",
        tmp_path / "runs",
    )
    assert _one_line_error(rc, err, "train") == f"{tmp_path}/{msg}"
    for mode in ("conv_bn_relus", "no_fuse"):
        recipe.write_text(
            f"modifiers:\n  - !QuantizationModifier\n    start_epoch: 0\n" f"    model_fuse_fn_name: {mode}\n"
        )
        Recipe.load(recipe)


def test_checkpoint_fuse_name_is_refused_and_never_called(cli, tmp_path, monkeypatch):
    called = []
    model = _small()
    path = save_checkpoint(
        tmp_path / "evil.pt", model=model, recipe_state={"qat": {"submodules": None, "config": {"fuse": "fuse"}}}
    )
    monkeypatch.setattr(type(model), "fuse", lambda self: called.append("fuse") or self)
    msg = (
        "checkpoint recipe_state['qat']: fuse must be one of 'conv_bn_relus', 'no_fuse', got 'fuse' "
        "(naming a model method is not supported)"
    )
    with pytest.raises(ConfigError, match=re.escape(msg)):
        model_from_checkpoint(load_checkpoint(path))
    with pytest.raises(ConfigError, match=r"^QATConfig: fuse must be one of 'conv_bn_relus', 'no_fuse', got 'train'"):
        restore_qat_structure(_small(), {"qat": {"submodules": None, "config": {"fuse": "train"}}})
    rc, err = cli("export", "--weights", path, "--img", "64")
    assert _one_line_error(rc, err, "export") == msg
    assert called == [] and not (tmp_path / "evil.onnx").exists()


def test_prepare_qat_never_calls_a_named_method():
    net = _small()
    net.my_fuse = lambda: pytest.fail("a fuse name from a config called a model method")
    with pytest.raises(ConfigError, match="got 'my_fuse'"):
        QATConfig(fuse="my_fuse")
    cfg = QATConfig()
    cfg.fuse = "my_fuse"  # changed after validation: prepare_qat checks again
    with pytest.raises(ConfigError, match="got 'my_fuse'"):
        prepare_qat(net, None, cfg)


# --- state dicts of other shapes ---------------------------------------------------------------------------
def test_shape_mismatch_is_one_line_naming_the_tensor(cli, tmp_path):
    model = _small()
    for field in ("model", "ema"):
        sd = model.state_dict()
        sd["model.2.conv.weight"] = torch.zeros(16, 8, 3, 3)
        path = save_checkpoint(
            tmp_path / f"bad_{field}.pt",
            model_yaml=model.yaml,
            names=model.names,
            **{"model": model.state_dict(), field: sd},
        )
        want = (
            f"checkpoint ({field}): model.2.conv.weight has shape [16, 8, 3, 3] in the file, "
            "[8, 8, 3, 3] in the model"
        )
        with pytest.raises(WeightsError, match=re.escape(want)):
            model_from_checkpoint(load_checkpoint(path))
        rc, err = cli("export", "--weights", path, "--img", "64")
        assert _one_line_error(rc, err, "export") == want


def test_load_state_checks_before_copying():
    model = _small()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sd = {k: torch.ones_like(v) for k, v in before.items()}
    sd["model.0.bn.weight"] = [1.0] * 8
    with pytest.raises(WeightsError, match=r"^ema: model.0.bn.weight is a list in the file, not a tensor$"):
        load_state(model, sd, source="ema")
    sd["model.0.bn.weight"] = torch.ones(3)
    with pytest.raises(WeightsError, match=r"^ema: model.0.bn.weight has shape \[3\] in the file, \[8\] in the model$"):
        load_state(model, sd, source="ema")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing half-loaded


def test_transfer_state_skips_what_does_not_fit():
    target = _small(nc=3)
    state = _small(nc=2).state_dict()
    state["model.0.bn.weight"] = "not a tensor"
    state["model.0.conv.weight"] = torch.zeros(8, 3, 5, 5)
    n = transfer_state(target, state, source="test")
    assert 0 < n < len(target.state_dict())
    assert target.state_dict()["model.0.conv.weight"].shape == (8, 3, 3, 3)


# --- downloads without a pinned checksum -------------------------------------------------------------------
def _unverified(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "not verified" in r.getMessage()]


def test_download_without_sha256_warns(http_dir, tmp_path, caplog):
    import hashlib

    served, base = http_dir
    (served / "f.bin").write_bytes(b"payload")
    with caplog.at_level(logging.WARNING, logger="sparseyolo"):
        download(base + "f.bin", tmp_path / "a" / "f.bin", progress=False)
    assert _unverified(caplog) == [f"{base}f.bin: no sha256 is pinned for this file, so the download is not verified"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sparseyolo"):
        download(
            base + "f.bin", tmp_path / "b" / "f.bin", sha256=hashlib.sha256(b"payload").hexdigest(), progress=False
        )
    assert _unverified(caplog) == []


def test_zoo_entry_without_sha256_warns(http_dir, tmp_path, caplog, monkeypatch):
    served, base = http_dir
    (served / "w.weights").write_bytes(b"\0" * 64)
    zoo = {
        "models": {
            "zoo:test/unpinned": {
                "url": base + "w.weights",
                "sha256": None,
                "format": "darknet",
                "cfg": "yolov3-tiny",
                "note": "test entry",
            }
        }
    }
    (tmp_path / "zoo.yaml").write_text(yaml.safe_dump(zoo))
    monkeypatch.setenv("SPARSEYOLO_ZOO_FILE", str(tmp_path / "zoo.yaml"))
    monkeypatch.setenv("SPARSEYOLO_CACHE", str(tmp_path / "cache"))
    with caplog.at_level(logging.WARNING, logger="sparseyolo"):
        path = resolve_weights("zoo:test/unpinned")
    assert path.read_bytes() == b"\0" * 64
    assert any(m.startswith(f"{base}w.weights: no sha256 is pinned") for m in _unverified(caplog)), caplog.text


def test_packaged_zoo_pins_what_can_be_known():
    zoo = load_zoo(Path(__file__).resolve().parents[1] / "src/sparseyolo/configs/zoo.yaml")
    tiny = [e for e in zoo.values() if e.filename == "yolov3-tiny.weights"]
    assert [e.sha256 for e in tiny] == [OFFICIAL_TINY_SHA256]
    for entry in zoo.values():
        assert entry.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", entry.sha256), entry.stub
        if entry.sha256 is None:  # the entry says so; download() warns when it fetches it
            assert "not verified" in entry.note, entry.stub


def test_get_voc_archives_without_sha256_warn(http_dir, tmp_path, caplog):
    from sparseyolo.data.voc_download import VOC_SHA256, fetch_and_extract

    served, base = http_dir
    names = ("one.tar", "two.tar")
    for name in names:
        _tar(served / name, [_file(f"VOCdevkit/{name}.txt", b"x")])
    with caplog.at_level(logging.WARNING, logger="sparseyolo"):
        fetch_and_extract(base, tmp_path / "VOC", archives=names, progress=False)
    assert (tmp_path / "VOC/VOCdevkit/two.tar.txt").read_bytes() == b"x"
    assert not any(n in VOC_SHA256 for n in names)
    assert _unverified(caplog) == [
        f"{base}{n}: no sha256 is pinned for this file, so the download is not verified" for n in names
    ]


# --- missing parts fail loudly -----------------------------------------------------------------------------
def test_a_missing_command_module_is_an_error_not_a_missing_command(monkeypatch):
    monkeypatch.setitem(cli_main.COMMANDS, "ghost", "no_such_command_module")
    with pytest.raises(ModuleNotFoundError, match="no_such_command_module"):
        cli_main.build_parser()


def test_quantization_api_has_no_soft_path(monkeypatch):
    import sparseyolo.quantization as q
    from sparseyolo.recipe.modifiers.quantization import quantization_api

    assert quantization_api() is q
    monkeypatch.delattr(q, "prepare_qat")  # a broken build: the failure is Python's, not a user error
    with pytest.raises(AttributeError, match="prepare_qat"):
        quantization_api().prepare_qat(_small())


def test_no_soft_paths_left_in_the_files_of_this_issue():
    src = Path(__file__).resolve().parents[1] / "src/sparseyolo"
    for rel in ("cli/main.py", "recipe/modifiers/quantization.py"):
        text = (src / rel).read_text()
        assert not re.search(r"not implemented|in this build|not built", text), rel


@pytest.mark.parametrize(
    "text",
    [
        "big: &b 1" + "0" * 400 + "\nmodifiers:\n  - !EpochRangeModifier {start_epoch: 0, end_epoch: *b}\n",
        "modifiers:\n  - !EpochRangeModifier {start_epoch: 0, end_epoch: .inf}\n",
    ],
    ids=["alias-to-huge-int", "infinity"],
)
def test_modifier_numbers_too_large_or_infinite(text):
    from sparseyolo.recipe import Recipe

    with pytest.raises(
        ConfigError, match=r"<recipe>:\d: !EpochRangeModifier: end_epoch (is too large|must be a finite)"
    ):
        Recipe.load(text)
