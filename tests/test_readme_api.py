"""The README's "workflow in Python" block, run as written (in a scratch folder)."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _block() -> str:
    text = README.read_text()
    section = text.split("## The workflow in Python", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README: no python block under 'The workflow in Python'"
    return match.group(1)


def test_readme_python_workflow_runs(tmp_path, monkeypatch, capsys):
    code = _block()
    assert len(code.strip().splitlines()) <= 20  # "about 15 lines"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 - our own README
    out = capsys.readouterr().out
    assert out.count("mAP@0.5:0.95") == 2 and out.count("img/s") == 2
    base, small = namespace["base"], namespace["small"]
    assert base.best.is_file() and small.best.is_file() and "mAP50" in base.metrics
    assert all(Path(f).is_file() and Path(f).suffix == ".onnx" for f in namespace["files"])
    # the channel-pruned model is thinned: fewer parameters in its exported graph
    assert Path(namespace["files"][1]).stat().st_size < 0.6 * Path(namespace["files"][0]).stat().st_size
    metrics = namespace["m"]
    assert 0.0 <= metrics.map <= metrics.map50 <= 1.0 and metrics.save_dir.is_dir()


def test_api_rejects_unknown_train_options():
    import sparseyolo

    with pytest.raises(TypeError, match="unknown options"):
        sparseyolo.train(data="x.yaml", imgsz=64)
