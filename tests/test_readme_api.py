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


def _python_blocks_under(heading: str) -> list[str]:
    section = README.read_text().split(heading, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_readme_recipe_blocks_run_on_plain_cnns(capsys):
    """The two blocks under "Recipes in your own training loop": the ten-line recipe on a plain
    ``nn.Sequential``, then the structured block on a CNN with a residual add and a concat, whose
    "the same training loop as above" is the first block's loop. The widths the second block prints
    are the ones its comment promises."""
    first, structured = _python_blocks_under("## Recipes in your own training loop")[:2]
    namespace: dict = {}
    exec(compile(first, str(README), "exec"), namespace)  # noqa: S102 - our own README
    loop = first[first.index("for epoch in range(manager.max_epochs):") :]
    code = structured.replace("# ... the same training loop as above ...", loop.replace("16, 16)", "32, 32)"))
    assert code != structured, "README: the structured block no longer says where the training loop goes"
    capsys.readouterr()
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102
    out = capsys.readouterr().out
    promised = re.search(r"print\(\[m\.out_channels .*# (\[[\d, ]+\])", structured).group(1)
    assert out.strip().splitlines()[-1] == promised
    assert "thinned:" in out
