"""Data YAML loading: both Ultralytics styles, path roots and clear errors."""

from pathlib import Path

import pytest

from sparseyolo.data.config import load_data_config
from sparseyolo.utils.errors import ConfigError


def _write(tmp_path: Path, text: str, name: str = "data.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_list_names_relative_to_yaml_folder(tmp_path):
    p = _write(tmp_path, "train: images/train\nval: images/val\nnames: [cat, dog]\n")
    cfg = load_data_config(p)
    assert cfg["names"] == ["cat", "dog"] and cfg["nc"] == 2
    assert cfg["train"] == str((tmp_path / "images/train").resolve())
    assert cfg["val"] == str((tmp_path / "images/val").resolve())
    assert cfg["test"] is None
    assert cfg["path"] == str(tmp_path.resolve())


def test_dict_names_path_root_and_lists(tmp_path):
    root = tmp_path / "ds"
    p = _write(
        tmp_path,
        f"path: {root}\ntrain: [a/train.txt, /abs/images]\nval: images/val\n"
        "test: images/test\nnc: 3\nnames: {0: a, 2: c, 1: b}\ndownload: https://x/y.zip\n",
    )
    cfg = load_data_config(p)
    assert cfg["names"] == ["a", "b", "c"]
    assert cfg["train"] == [str(root / "a/train.txt"), "/abs/images"]
    assert cfg["test"] == str(root / "images/test")
    assert cfg["download"] == "https://x/y.zip"


def test_relative_path_root_resolves_against_yaml_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "ds").mkdir()  # exists beside the YAML, so a same-named folder under the cwd cannot win
    p = _write(tmp_path / "sub", "path: ../ds\ntrain: images/train\nval: images/val\nnames: [x]\n")
    assert load_data_config(p)["val"] == str((tmp_path / "ds/images/val").resolve())


def test_coco128_style_absolute_path_root(tmp_path):
    root = tmp_path / "elsewhere/coco128"  # a dataset outside the YAML's folder
    for split in ("train2017", "val2017"):
        (root / "images" / split).mkdir(parents=True)
    (tmp_path / "cfg").mkdir()
    p = _write(
        tmp_path / "cfg",
        f"path: {root}\ntrain: images/train2017\nval: images/val2017\nnames: {{0: person, 1: bicycle}}\n",
    )
    cfg = load_data_config(p)
    assert Path(cfg["train"]).is_dir() and Path(cfg["val"]).is_dir()
    assert cfg["train"] == str(root / "images/train2017") and cfg["val"] == str(root / "images/val2017")
    assert cfg["names"] == ["person", "bicycle"] and cfg["nc"] == 2 and cfg["test"] is None


@pytest.mark.parametrize(
    "text, needle",
    [
        ("train: a\nval: b\n", "'names'"),
        ("train: a\nval: b\nnc: 3\nnames: [x, y]\n", "'nc'"),
        ("val: b\nnames: [x]\n", "'train'"),
        ("train: a\nnames: [x]\n", "'val'"),
        ("train: a\nval: b\nnames: {0: x, 2: y}\n", "'names'"),
        ("- just\n- a list\n", "mapping"),
        ("train: [a\nval: b\n", "invalid YAML"),
    ],
)
def test_errors_name_file_and_key(tmp_path, text, needle):
    p = _write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_data_config(p)
    assert str(p) in str(e.value) and needle in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_data_config(tmp_path / "nope.yaml")
