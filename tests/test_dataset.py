"""YoloDataset / create_dataloader on generated images of varied sizes (coco128-like), including
broken labels and images."""

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from voc_fixture import make_yolo_folder

from sparseyolo.data.dataset import YoloDataset, create_dataloader
from sparseyolo.data.labels import img2label_paths, writable_dir
from sparseyolo.utils.errors import DataError

IDS = [f"img_{i:04d}" for i in range(10)]
N_TRAIN, N_VAL = 12, 16


@pytest.fixture(scope="module")
def coco_src(tmp_path_factory):
    """A coco128-like folder: ``images/train`` (12 images, the last two without label files) and
    ``images/val`` (16), of varied sizes and aspect ratios, 80 classes; image 0 of train is 320x240."""
    root = tmp_path_factory.mktemp("coco")
    make_yolo_folder(root, "train", n=N_TRAIN, unlabeled=(10, 11))
    make_yolo_folder(root, "val", n=N_VAL, seed=1)
    return root


@pytest.fixture
def broken_ds(tmp_path, coco_src):
    """A copy of ten of those images whose labels / images are damaged in known ways."""
    img_dir, lb_dir = tmp_path / "images/train", tmp_path / "labels/train"
    img_dir.mkdir(parents=True)
    lb_dir.mkdir(parents=True)
    for i in IDS:
        shutil.copy(coco_src / f"images/train/{i}.jpg", img_dir)
        shutil.copy(coco_src / f"labels/train/{i}.txt", lb_dir)
    good = (lb_dir / f"{IDS[0]}.txt").read_text().splitlines()
    (lb_dir / f"{IDS[1]}.txt").write_text("0 0.5 0.5 0.2\n")  # 4 columns
    (lb_dir / f"{IDS[2]}.txt").write_text("0 1.7 0.5 0.2 0.2\n")  # coordinate 1.7
    (lb_dir / f"{IDS[3]}.txt").write_text("\n".join(good + good[:2]) + "\n")  # 2 duplicates
    (lb_dir / f"{IDS[4]}.txt").write_text("cat 0.5 0.5 0.2 0.2\n")  # non-numeric
    (lb_dir / f"{IDS[5]}.txt").write_text("-1 0.5 0.5 0.2 0.2\n")  # negative class
    (lb_dir / f"{IDS[6]}.txt").write_text("3 0.5 0.5 0.0 0.2\n1 0.5 0.5 0.3 0.3\n")  # zero-size row
    (img_dir / f"{IDS[7]}.jpg").write_bytes(b"this is not a jpeg" * 50)  # corrupt image
    data = (coco_src / f"images/train/{IDS[8]}.jpg").read_bytes()
    (img_dir / f"{IDS[8]}.jpg").write_bytes(data[: len(data) // 2])  # truncated image
    (lb_dir / f"{IDS[9]}.txt").unlink()  # no label: no objects
    return tmp_path


def test_loads_all_images(coco_src, caplog):
    with caplog.at_level(logging.WARNING, logger="sparseyolo"):
        ds = YoloDataset(coco_src / "images/train", img_size=160, nc=80)
    assert len(ds) == N_TRAIN and not caplog.records
    n_rows = sum(len(p.read_text().split("\n")) - 1 for p in map(Path, ds.label_files) if p.exists())
    assert sum(len(lb) for lb in ds.labels) == n_rows
    assert sum(len(lb) == 0 for lb in ds.labels) == 2  # two images without label files
    img, labels, path, shapes = ds[0]
    assert img.dtype == torch.uint8 and img.shape == (3, 160, 160)
    assert labels.shape[1] == 6 and (labels[:, 2:] >= 0).all() and (labels[:, 2:] <= 1).all()
    (h0, w0), ((rh, rw), (pw, ph)) = shapes
    assert (h0, w0) == (240, 320) and rw == pytest.approx(0.5) and (pw, ph) == (0.0, 20.0)
    assert Path(path).name == f"{IDS[0]}.jpg"
    # RGB order: compare with a direct decode of the unpadded area
    import cv2

    ref = cv2.resize(cv2.imread(path), (160, 120), interpolation=cv2.INTER_AREA)[..., ::-1]
    got = img.permute(1, 2, 0).numpy()[20:140]
    assert np.abs(got.astype(int) - ref.astype(int)).mean() < 1.0
    assert (img.permute(1, 2, 0).numpy()[:20] == 114).all()


def test_broken_labels_reported_once(broken_ds, caplog):
    with caplog.at_level(logging.WARNING, logger="sparseyolo"):
        ds = YoloDataset(broken_ds / "images/train", img_size=128, nc=80)
    names = sorted(Path(f).stem for f in ds.im_files)
    assert names == sorted([IDS[0], IDS[3], IDS[6], IDS[9]])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    msg = warnings[0]
    for needle in [
        "wrong column count",
        f"{IDS[1]}.txt:1",
        "coordinate outside [0, 1]",
        "1.7",
        "duplicate row (2 rows dropped)",
        "non-numeric value",
        f"{IDS[4]}.txt",
        "negative class id",
        "zero-size box (1 rows dropped)",
        "corrupt image",
        f"{IDS[7]}.jpg",
        f"{IDS[8]}.jpg",
        "truncated",
    ]:
        assert needle in msg, needle
    by_name = {Path(f).stem: lb for f, lb in zip(ds.im_files, ds.labels, strict=False)}
    good = np.loadtxt(broken_ds / f"labels/train/{IDS[0]}.txt", ndmin=2)
    assert len(by_name[IDS[3]]) == len(good)  # duplicates removed, image kept
    assert np.allclose(by_name[IDS[6]], [[1, 0.5, 0.5, 0.3, 0.3]])
    assert len(by_name[IDS[9]]) == 0


def test_class_id_beyond_nc_and_first_n_names(broken_ds, caplog):
    with caplog.at_level(logging.WARNING, logger="sparseyolo"):
        ds = YoloDataset(broken_ds / "images/train", img_size=128, nc=2)
    msg = caplog.records[-1].getMessage()
    assert "class id >= nc" in msg and "nc=2" in msg
    assert all(lb[:, 0].max() < 2 for lb in ds.labels if len(lb))


def test_label_cache_written_reused_and_invalidated(broken_ds, caplog):
    cache = broken_ds / "labels/train.cache"
    YoloDataset(broken_ds / "images/train", img_size=128)
    assert cache.is_file()
    with caplog.at_level(logging.INFO, logger="sparseyolo"):
        YoloDataset(broken_ds / "images/train", img_size=128)
    assert "(label cache)" in caplog.text and "wrong column count" in caplog.text  # problems survive the cache
    caplog.clear()
    lb = broken_ds / f"labels/train/{IDS[1]}.txt"
    lb.write_text("0 0.5 0.5 0.2 0.2\n")  # fixed: different size -> rescan
    with caplog.at_level(logging.INFO, logger="sparseyolo"):
        ds = YoloDataset(broken_ds / "images/train", img_size=128)
    assert "(label cache)" not in caplog.text
    assert IDS[1] in {Path(f).stem for f in ds.im_files}


def test_read_only_folder_gets_no_cache(coco_src, tmp_path):
    """A dataset folder without write permission (shared reference data) gets no label cache. The
    folder has no write bits at all, which sparseyolo honours even for root (who could write)."""
    ro = tmp_path / "ro"
    for sub in ("images/val", "labels/val"):
        (ro / sub).mkdir(parents=True)
    for i in range(4):
        shutil.copy(coco_src / f"images/val/{IDS[i]}.jpg", ro / "images/val")
        shutil.copy(coco_src / f"labels/val/{IDS[i]}.txt", ro / "labels/val")
    folders = [ro / "images/val", ro / "labels/val", ro / "images", ro / "labels", ro]
    try:
        for d in folders:
            d.chmod(0o555)
        if os.stat(ro / "labels").st_mode & 0o222 or (os.geteuid() != 0 and os.access(ro / "labels", os.W_OK)):
            pytest.skip("chmod does not make folders read-only on this file system")
        assert not writable_dir(ro / "labels")
        ds = YoloDataset(ro / "images/val", img_size=128)
        assert len(ds) == 4 and sum(map(len, ds.labels)) > 0
        assert not list(ro.rglob("*.cache"))
    finally:
        for d in reversed(folders):
            d.chmod(0o755)


def test_txt_list_with_missing_image_and_label_pairing(broken_ds, caplog):
    lst = broken_ds / "train.txt"
    lst.write_text(f"./images/train/{IDS[0]}.jpg\n{broken_ds}/images/train/{IDS[3]}.jpg\n" "images/train/gone.jpg\n")
    with caplog.at_level(logging.WARNING, logger="sparseyolo"):
        ds = YoloDataset(lst, img_size=128)
    assert len(ds) == 2 and "missing image" in caplog.text and "gone.jpg" in caplog.text
    assert img2label_paths(["/d/images/x/images/a.b.jpg"]) == ["/d/images/x/labels/a.b.txt"]
    assert (broken_ds / "train.cache").is_file()


def test_no_usable_image_is_an_error(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images/a.jpg").write_bytes(b"junk")
    with pytest.raises(DataError, match=str(tmp_path / "images")):
        YoloDataset(tmp_path / "images")
    with pytest.raises(DataError, match="not found"):
        YoloDataset(tmp_path / "nothing")


def test_rect_batches_are_stride_multiples(coco_src):
    loader, ds = create_dataloader(coco_src / "images/val", 160, 4, 32, rect=True, workers=0)
    assert (ds.batch_shapes % 32 == 0).all() and ds.batch_shapes.max() == 160
    ar = ds.shapes[:, 1] / ds.shapes[:, 0]
    assert (np.diff(ar) >= 0).all()  # sorted by aspect ratio
    seen = 0
    for imgs, labels, paths, shapes in loader:
        assert imgs.shape[2:] == tuple(ds.batch_shapes[seen // 4])
        assert labels[:, 0].max() < len(paths)
        for (h0, w0), ((rh, rw), _pad) in shapes:  # the whole image fits, long side 160
            assert max(round(h0 * rh), round(w0 * rw)) == 160
        seen += len(paths)
    assert seen == N_VAL and len({tuple(s) for s in ds.batch_shapes}) > 1


def test_cache_modes_match_plain_loading(broken_ds):
    plain = YoloDataset(broken_ds / "images/train", img_size=96)
    ram = YoloDataset(broken_ds / "images/train", img_size=96, cache="ram")
    disk = YoloDataset(broken_ds / "images/train", img_size=96, cache="disk")
    assert len(list((broken_ds / "images/train").glob("*.npy"))) == len(plain)
    for i in range(len(plain)):
        a, b, c = plain[i], ram[i], disk[i]
        assert torch.equal(a[0], b[0]) and torch.equal(a[0], c[0]) and torch.equal(a[1], c[1])


def test_seeded_shuffle_reproducible_and_distributed(coco_src, monkeypatch):
    def order(seed, **kw):
        loader, _ = create_dataloader(coco_src / "images/val", 64, 4, 32, shuffle=True, seed=seed, workers=0, **kw)
        return [p for _, _, paths, _ in loader for p in paths]

    a, b, c = order(1), order(1), order(2)
    assert a == b and a != c and sorted(a) == sorted(c)
    monkeypatch.setenv("WORLD_SIZE", "2")
    r0, r1 = order(3, rank=0), order(3, rank=1)
    assert len(r0) == len(r1) == N_VAL // 2 and not set(r0) & set(r1)


def test_augmented_loader_with_workers_is_seeded(coco_src):
    def first_batch():
        loader, _ = create_dataloader(
            coco_src / "images/train",
            96,
            4,
            32,
            augment=True,
            shuffle=True,
            seed=5,
            workers=2,
            hyp={"mosaic": 1.0, "degrees": 5},
        )
        return next(iter(loader))

    (i1, l1, _, _), (i2, l2, _, _) = first_batch(), first_batch()
    assert torch.equal(i1, i2) and torch.equal(l1, l2)
