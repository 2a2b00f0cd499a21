"""Where weights come from: local files, URLs, ``zoo:`` stubs; and loading them into a model.

``resolve_weights`` turns a spec into a local file (downloading into ``cache_dir()/weights`` with a
progress bar and the registry's sha256). ``load_model`` turns that file into a
:class:`DetectionModel`: a sparseyolo checkpoint, or a Darknet ``.weights`` file whose layout is
derived from our YAML model (a Darknet ``.cfg`` is optional and only validates).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
import yaml

from sparseyolo.models.checkpoint import apply_qat_structure, load_checkpoint, model_from_checkpoint, qat_state
from sparseyolo.models.darknet import load_darknet_weights, read_header
from sparseyolo.models.darknet_cfg import parse_cfg
from sparseyolo.models.darknet_layout import darknet_layout
from sparseyolo.models.parse import MODELS, load_model_yaml
from sparseyolo.models.yolo import DetectionModel
from sparseyolo.utils.downloads import cache_dir, download
from sparseyolo.utils.errors import ConfigError, WeightsError
from sparseyolo.utils.logging import LOGGER
from sparseyolo.utils.registry import close_matches

ZOO_FILE = Path(__file__).resolve().parents[1] / "configs" / "zoo.yaml"
FORMATS = ("darknet", "sparseyolo")


@dataclass(frozen=True)
class ZooEntry:
    stub: str
    url: str
    sha256: str | None
    format: str
    cfg: str | None
    nc: int | None
    names: tuple[str, ...] | None
    note: str = ""

    @property
    def filename(self) -> str:
        return Path(urlparse(self.url).path).name


def zoo_file() -> Path:
    """The registry file: ``$SPARSEYOLO_ZOO_FILE`` or the packaged ``configs/zoo.yaml``."""
    env = os.environ.get("SPARSEYOLO_ZOO_FILE")
    return Path(env).expanduser() if env else ZOO_FILE


def load_zoo(path: str | os.PathLike | None = None) -> dict[str, ZooEntry]:
    """Parse and validate the registry; :class:`ConfigError` names the file and stub."""
    path = Path(path) if path is not None else zoo_file()
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except OSError as e:
        raise ConfigError(f"weights registry {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"weights registry {path}: invalid YAML ({e})") from None
    datasets = doc.get("datasets") or {}
    entries = {}
    for stub, item in (doc.get("models") or {}).items():
        where = f"{path} (stub {stub!r})"
        if not str(stub).startswith("zoo:") or not isinstance(item, dict):
            raise ConfigError(f"{where}: entries must be 'zoo:...' stubs mapping to url/sha256/format/cfg")
        for key in ("url", "format"):
            if not item.get(key):
                raise ConfigError(f"{where}: missing key {key!r}")
        if item["format"] not in FORMATS:
            raise ConfigError(f"{where}: format must be one of {FORMATS}, got {item['format']!r}")
        names = item.get("names")
        if isinstance(names, str):
            if names not in datasets:
                raise ConfigError(f"{where}: names {names!r} is not a key of 'datasets'")
            names = datasets[names]
        entries[stub] = ZooEntry(
            stub,
            str(item["url"]),
            (item.get("sha256") or None),
            item["format"],
            item.get("cfg"),
            item.get("nc"),
            tuple(names) if names else None,
            str(item.get("note") or ""),
        )
    return entries


def _normalise_stub(stub: str) -> str:
    return stub.split("?", 1)[0].rstrip("/")  # SparseZoo stubs may carry ?recipe_type=...


def zoo_entry(stub: str) -> ZooEntry:
    """Look up a ``zoo:`` stub; unknown stubs raise :class:`WeightsError` listing close ones."""
    entries = load_zoo()
    key = _normalise_stub(stub)
    if key in entries:
        return entries[key]
    hint = close_matches(key, tuple(entries), n=3)
    msg = f"unknown weights stub {stub!r} in {zoo_file()}"
    msg += f"; close stubs: {', '.join(hint)}" if hint else f"; known: {', '.join(sorted(entries))}"
    raise WeightsError(msg)


def find_zoo_entry(spec: str) -> ZooEntry | None:
    """The registry entry for a stub, a registered URL, or a bare file name like ``yolov3.weights``."""
    if spec.startswith("zoo:"):
        return zoo_entry(spec)
    entries = load_zoo()
    for e in entries.values():
        if spec == e.url:
            return e
    if os.sep not in spec and "/" not in spec and not Path(spec).exists():
        matches = [e for e in entries.values() if e.filename == spec]
        return matches[0] if matches else None
    return None


def cache_path(url: str) -> Path:
    """Where a URL is cached: ``cache_dir()/weights/<host>/<url path>`` (unique per URL, readable)."""
    parsed = urlparse(url)
    parts = [q for q in parsed.path.split("/") if q not in ("", ".", "..")] or ["weights"]
    host = (parsed.netloc or "local").replace(":", "_")
    return cache_dir().joinpath("weights", host, *parts)


def _fetch(url: str, sha256: str | None) -> Path:
    return download(url, cache_path(url), sha256=sha256, progress=True)


def resolve_weights(spec: str | os.PathLike) -> Path:
    """Local path, ``http(s)://`` URL or ``zoo:`` stub -> local file (downloaded and cached)."""
    text = str(spec)
    path = Path(text).expanduser()
    if path.is_file():
        return path
    if text.startswith("zoo:"):
        entry = zoo_entry(text)
        if entry.sha256 is None:
            LOGGER.warning(f"{entry.stub}: no pinned sha256, the download is not verified ({entry.note})")
        return _fetch(entry.url, entry.sha256)
    if text.startswith(("http://", "https://")):
        entry = find_zoo_entry(text)
        return _fetch(text, entry.sha256 if entry else None)
    entry = find_zoo_entry(text)
    if entry is not None:
        return _fetch(entry.url, entry.sha256)
    if path.exists():
        raise WeightsError(f"weights path is not a file: {path}")
    known = [e.filename for e in load_zoo().values()]
    hint = close_matches(path.name, known, n=3)
    raise WeightsError(f"weights not found: {text}" + (f"; downloadable: {', '.join(hint)}" if hint else ""))


# ---------------------------------------------------------------------------------------------
# loading


def transfer_state(model, state: dict, source: str = "weights") -> int:
    """Copy every entry of ``state`` whose name and shape match ``model``; returns the count."""
    own = model.state_dict()
    # entries that are not tensors, or whose shape differs, are skipped (the point is a partial copy);
    # load_state_dict would raise a multi-line RuntimeError on either
    matched = {
        k: v
        for k, v in state.items()
        if k in own
        and isinstance(v, torch.Tensor)
        and own[k].shape == v.shape
        and (own[k].is_complex() or not v.is_complex())
    }
    model.load_state_dict(matched, strict=False)
    LOGGER.info(f"Transferred {len(matched)}/{len(own)} items from {source}")
    return len(matched)


def infer_darknet_nc(model: DetectionModel, path: Path) -> int | None:
    """Class count implied by a ``.weights`` file's size for ``model``'s layout (None if none fits)."""
    data_len = path.stat().st_size
    with open(path, "rb") as f:
        _, offset = read_header(f.read(20), path)
    floats, rem = divmod(data_len - offset, 4)
    layout = darknet_layout(model)
    fixed = sum(d.n_floats for d in layout if d.level is None)
    per_output = sum(d.conv.in_channels + 1 for d in layout if d.level is not None) * model.detect.na
    no, left = divmod(floats - fixed, per_output) if floats > fixed and not rem else (0, 1)
    return no - 5 if not left and no > 5 else None


def _yaml_for_darknet(path: Path, entry: ZooEntry | None, cfg, darknet_cfg: str | None):
    if cfg is not None:
        return cfg
    if entry is not None and entry.cfg:
        return entry.cfg
    for stem in (path.stem, Path(darknet_cfg).stem if darknet_cfg else None):
        if stem in MODELS:
            return stem
    if darknet_cfg:  # a renamed file, or one `export --format darknet` wrote (e.g. best.cfg of a thinned run)
        name = _model_with_layers_of(darknet_cfg)
        if name is not None:
            return name
    raise WeightsError(
        f"cannot tell which model {path} holds; pass --cfg with one of " f"{', '.join(MODELS.names())} or a model YAML"
    )


def _layer_signature(sections: list) -> list[tuple[str, str, str]]:
    """Layer kinds with each conv's kernel size and stride: what a Darknet cfg fixes apart from widths."""
    return [(s.type, s.options.get("size", ""), s.options.get("stride", "")) for s in sections]


def _model_with_layers_of(darknet_cfg: str) -> str | None:
    """The registered model whose Darknet layers (kinds, kernel sizes, strides) are those of ``darknet_cfg``,
    whatever its filter counts (a thinned export keeps its layers); None when none or several match."""
    from sparseyolo.models.darknet_cfg_export import darknet_cfg_sections

    parsed = parse_cfg(darknet_cfg)
    wanted = _layer_signature(parsed.layers)
    found = []
    for name in MODELS.names():
        try:  # built for real: the [yolo] sections need the anchors' values (a second or so for YOLOv3)
            model = DetectionModel(name, nc=parsed.yolos[0].classes if parsed.yolos else 80)
            if _layer_signature(darknet_cfg_sections(model)[1:]) == wanted:
                found.append(name)
        except Exception as e:  # a model without a Darknet form cannot be the one
            LOGGER.debug(f"{name}: {e}")
    return found[0] if len(found) == 1 else None


def _load_darknet(path: Path, entry: ZooEntry | None, cfg, nc: int | None) -> DetectionModel:
    darknet_cfg = str(cfg) if isinstance(cfg, (str, os.PathLike)) and str(cfg).endswith(".cfg") else None
    yaml_cfg = _yaml_for_darknet(path, entry, None if darknet_cfg else cfg, darknet_cfg)
    if darknet_cfg:
        file_nc = parse_cfg(darknet_cfg).yolos[0].classes
    else:  # the file size tells the class count; the registry's nc is only a fallback
        with torch.device("meta"):  # layout only: no weights allocated
            probe = DetectionModel(yaml_cfg, nc=nc)
        file_nc = infer_darknet_nc(probe, path)
        file_nc = file_nc or (int(entry.nc) if entry is not None and entry.nc else nc)
    names = list(entry.names) if entry is not None and entry.names and len(entry.names) == file_nc else None
    model = DetectionModel(yaml_cfg, nc=file_nc, names=names)
    load_darknet_weights(model, path, darknet_cfg)
    if nc is None or nc == model.nc:
        return model
    # new class count: keep everything but the detection convs (they start from the priors)
    target = DetectionModel(yaml_cfg, nc=nc)
    transfer_state(target, model.state_dict(), source=str(path))
    return target


def _same_architecture(cfg, model_yaml: dict) -> bool:
    """True when ``cfg`` builds the same layers as a checkpoint's ``model_yaml``."""
    d, _ = load_model_yaml(cfg)
    keys = ("backbone", "head", "anchors", "depth_multiple", "width_multiple", "act")
    return all(d.get(k) == model_yaml.get(k) for k in keys)


# files people pass to --weights by mistake; anything else that is not a zip is tried as Darknet data
NOT_WEIGHTS_SUFFIXES = (".onnx", ".yaml", ".yml", ".json", ".txt", ".md", ".cfg", ".jpg", ".png")


def _is_darknet_file(path: Path, entry: ZooEntry | None) -> bool:
    if entry is not None:
        return entry.format == "darknet"
    if path.suffix == ".weights":
        return True
    if path.suffix.lower() in NOT_WEIGHTS_SUFFIXES:
        hint = " (run an exported model with `sparseyolo val/detect --weights`)" if path.suffix == ".onnx" else ""
        raise WeightsError(
            f"{path}: not a weights file; expected a sparseyolo checkpoint (.pt) or Darknet " f".weights{hint}"
        )
    with open(path, "rb") as f:
        return f.read(2) != b"PK" and path.suffix not in (".pt", ".pth")  # torch.save writes a zip


def load_model(
    weights: str | os.PathLike, cfg: str | os.PathLike | dict | None = None, nc: int | None = None
) -> tuple[DetectionModel, dict | None]:
    """Load weights into a :class:`DetectionModel`; returns ``(model, checkpoint or None)``.

    - sparseyolo checkpoint: the model is rebuilt from it (EMA weights when present; QAT structure
      re-applied). With ``nc`` or ``cfg`` different from the checkpoint's, a new model is built and
      every weight with a matching name and shape is transferred (fine-tuning on a new dataset).
    - Darknet ``.weights``: the model comes from ``cfg`` (a model name / YAML), else the registry
      entry, else the file name stem (``yolov3-tiny.weights`` -> ``yolov3-tiny``). A Darknet
      ``.cfg`` path as ``cfg`` validates the layout and supplies anchors and the class count.
    """
    text = str(weights)
    entry = find_zoo_entry(text)
    path = resolve_weights(weights)
    if entry is None:  # a local copy of a registry file (e.g. yolov3-tiny.weights): use its metadata
        entry = next((e for e in load_zoo().values() if e.filename == path.name), None)
    if _is_darknet_file(path, entry):
        return _load_darknet(path, entry, cfg, nc), None
    ckpt = load_checkpoint(path)
    model = model_from_checkpoint(ckpt)
    if (nc is None or nc == model.nc) and (cfg is None or _same_architecture(cfg, ckpt["model_yaml"])):
        return model, ckpt
    target = DetectionModel(cfg if cfg is not None else ckpt["model_yaml"], nc=nc if nc is not None else model.nc)
    if target.nc == model.nc:  # the head carries over, and with it its box parametrisation
        target.names = list(model.names)
        target.decode = model.decode
    qat = qat_state(ckpt)
    if qat is not None:
        apply_qat_structure(target, qat)
    transfer_state(target, model.state_dict(), source=str(path))
    return target, ckpt
