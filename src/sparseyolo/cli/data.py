"""``sparseyolo data``: dataset tools (``voc2yolo``, ``get-voc``)."""

from __future__ import annotations

import argparse

from sparseyolo.cli.common import HelpFormatter
from sparseyolo.data.voc_download import DEFAULT_URL_BASE  # a constant; the module imports no torch

HELP = "dataset tools: convert Pascal VOC to YOLO layout (voc2yolo), download PASCAL VOC (get-voc)"

VOC2YOLO_HELP = (
    "convert VOC-style XML annotations to YOLO txt labels (Annotations/ + JPEGImages/, annotations/ + images/, "
    "XML beside the images, or --images + --annotations)"
)
GET_VOC_HELP = (
    "download VOC2007 trainval+test and VOC2012 trainval, convert them "
    "(train = 07+12 trainval, val = 07 test) and write voc.yaml"
)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--difficult",
        choices=("drop", "keep"),
        default="drop",
        help="what to do with objects marked <difficult>1</difficult>",
    )
    p.add_argument("--copy", action="store_true", help="copy images instead of symlinking them")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="<subcommand>")
    fmt = HelpFormatter

    p = sub.add_parser(
        "voc2yolo",
        help=VOC2YOLO_HELP,
        description=VOC2YOLO_HELP,
        formatter_class=fmt,
        epilog="Boxes: VOC coordinates are 1-based inclusive pixels, so x1 = xmin - 1, x2 = xmax; "
        "cx = (xmin - 1 + xmax) / 2 / W, w = (xmax - xmin + 1) / W (clipped to the image). "
        "Boxes with xmax <= xmin or ymax <= ymin are dropped and reported. "
        "Example: sparseyolo data voc2yolo --voc ../shared/data/bccd --out datasets/bccd "
        "--names RBC,WBC,Platelets",
    )
    p.add_argument(
        "--voc",
        default=None,
        help="dataset folder: Annotations/ + JPEGImages/ (+ ImageSets/Main/), annotations/ + images/, "
        "or XML files beside the images",
    )
    p.add_argument("--images", default=None, help="image folder (with --annotations, instead of --voc)")
    p.add_argument("--annotations", default=None, help="folder of VOC XML files (with --images)")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=None,
        help="without split files: hold out this share of the images as val (e.g. 0.2; seeded by --seed). "
        "Without it and without split files, train and val are the same images (a warning says so)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the --val-fraction split")
    p.add_argument("--out", required=True, help="output folder: images/<split>/, labels/<split>/, data YAML")
    p.add_argument(
        "--names",
        default=None,
        help="class list: a file (one name a line), a comma list (RBC,WBC,Platelets) or 'auto' "
        "(collect from the XMLs, sorted); default: the 20 VOC classes",
    )
    p.add_argument(
        "--splits",
        default=None,
        help="comma list of ImageSets/Main split files to convert (default: those of train, val, "
        "trainval, test present; without ImageSets every annotation forms split 'all')",
    )
    p.add_argument(
        "--train-split",
        default=None,
        help="split the YAML's train key uses (default: trainval if " "trainval and test exist, else train)",
    )
    p.add_argument(
        "--val-split",
        default=None,
        help="split for the YAML's val key (default: test if trainval " "and test exist, else val)",
    )
    p.add_argument("--test-split", default=None, help="split for the YAML's test key (default: test if present)")
    p.add_argument("--yaml-name", default="data.yaml", help="file name of the data YAML written into --out")
    _common(p)
    p.set_defaults(_data_run=_run_voc2yolo)

    g = sub.add_parser("get-voc", help=GET_VOC_HELP, description=GET_VOC_HELP, formatter_class=fmt)
    g.add_argument(
        "--dir",
        default="datasets/VOC",
        help="where archives are extracted and YOLO files written; tars already "
        "placed in DIR/archives/ are used without downloading",
    )
    g.add_argument(
        "--url-base",
        default=DEFAULT_URL_BASE,
        help="mirror folder holding VOCtrainval_06-Nov-2007.tar, VOCtest_06-Nov-2007.tar and "
        "VOCtrainval_11-May-2012.tar",
    )
    g.add_argument("--keep-archives", action="store_true", help="keep the .tar files after extraction")
    _common(g)
    g.set_defaults(_data_run=_run_get_voc)
    parser.set_defaults(_data_parser=parser)


def _print_report(report) -> None:
    for line in report.lines():
        print(line)


def _run_voc2yolo(args) -> int:
    from sparseyolo.data.voc import convert_voc, parse_names

    splits = [s.strip() for s in args.splits.split(",") if s.strip()] if args.splits else None
    report = convert_voc(
        args.voc,
        args.out,
        splits=splits,
        names=parse_names(args.names),
        difficult=args.difficult,
        copy=args.copy,
        train=args.train_split,
        val=args.val_split,
        test=args.test_split,
        yaml_name=args.yaml_name,
        progress=not args.quiet,
        images=args.images,
        annotations=args.annotations,
        val_fraction=args.val_fraction,
        seed=args.seed,
    )
    print(f"classes ({len(report.names)}): {', '.join(report.names)}")
    _print_report(report)
    return 0


def _run_get_voc(args) -> int:
    from sparseyolo.data.voc_download import get_voc

    report = get_voc(
        args.dir,
        args.url_base,
        difficult=args.difficult,
        copy=args.copy,
        keep_archives=args.keep_archives,
        progress=not args.quiet,
    )
    _print_report(report)
    return 0


def run(args) -> int:
    if not getattr(args, "_data_run", None):
        args._data_parser.print_help()
        return 2
    return args._data_run(args)
