import numpy as np
import yaml
from PIL import Image

from sparseyolo.data.synthetic import SHAPES_NAMES, make_shapes_dataset


def test_shapes_dataset_boxes_match_drawn_pixels(tmp_path):
    data_yaml = make_shapes_dataset(tmp_path / "shapes", n_train=6, n_val=2, img_size=128, seed=3)
    cfg = yaml.safe_load(data_yaml.read_text())
    assert cfg["names"] == SHAPES_NAMES
    labels = sorted((tmp_path / "shapes" / "labels" / "train").glob("*.txt"))
    assert len(labels) == 6
    for lab in labels:
        rows = np.loadtxt(lab, ndmin=2)
        assert rows.shape[1] == 5 and len(rows) >= 1
        assert ((rows[:, 0] >= 0) & (rows[:, 0] < 3)).all()
        xyxy = np.c_[
            rows[:, 1] - rows[:, 3] / 2,
            rows[:, 2] - rows[:, 4] / 2,
            rows[:, 1] + rows[:, 3] / 2,
            rows[:, 2] + rows[:, 4] / 2,
        ]
        assert (xyxy >= 0).all() and (xyxy <= 1).all()
        img = Image.open(str(lab).replace("labels", "images").replace(".txt", ".jpg"))
        assert img.size == (128, 128)
    # reuse: a second call returns the same file without regenerating
    assert make_shapes_dataset(tmp_path / "shapes", n_train=6, n_val=2, img_size=128) == data_yaml
