"""`make bench-backbones`: which frozen backbone and test-time views for the image model, accuracy per millisecond.

    python -m bench.backbones [--data PATH] [--backbones efficientnet-lite0,...] [--modes none,flip,...]

For every backbone (EfficientNet-Lite0/1/2, each at its own input size) and test-time mode
(`image_service.views.TTA_MODES`), in one run:

* quality: val weighted F1 of two quick models on the frozen features (cached in `.cache/`, the
  training cache): a linear probe (LogisticRegression on sqrt-standardised features) and one
  head member of the training recipe (`train_image_head`, ensemble 1), both fitted on the plain
  and mirrored views of the train images the image head may fit (the fusion products left out,
  `training.pairing`); val images are combined as the mode says, as the service would;
* speed: ms per image of the served path on ONNX Runtime at batch 8 — views made from the
  prepared images (`views.apply_views`) and the backbone's ONNX graph with the mean over views
  (`backbone_onnx`), configurations interleaved so that load on the machine hits all alike.
  The head (a few small matmuls) is left out: it is the same for every row.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from training.data import PROJECT_ROOT, data_dir, fingerprint, load_categories
from training.pairing import reserved_for_fusion

CACHE_DIR = PROJECT_ROOT / ".cache"
BACKBONES = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from image_service.views import TTA_MODES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="data folder (default: $RAKUTEN_DATA or ../shared/rakuten)")
    parser.add_argument("--backbones", default=",".join(BACKBONES))
    parser.add_argument("--modes", default=",".join(TTA_MODES))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=15, help="timed calls per configuration")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: the node's CPUs)")
    parser.add_argument("--cache-dir", type=default_path, default=CACHE_DIR)
    return parser.parse_args(argv)


def default_path(value: str):
    from pathlib import Path

    return Path(value)


def probe_f1(train_x, train_y, val_x, val_y, codes) -> float:
    import warnings

    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    from training.reports import f1_scores

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        probe = make_pipeline(FunctionTransformer(np.sqrt), StandardScaler(),
                              LogisticRegression(C=0.05, max_iter=2000)).fit(train_x, train_y)
    return f1_scores(val_y, probe.predict(val_x), range(len(codes))).weighted


def quality(args, root, codes) -> dict[tuple[str, str], tuple[float, float]]:
    from image_service.views import TTA_MODES
    from training.image_model import FeatureCache, HeadConfig, View, image_products, train_image_head
    from training.reports import f1_scores

    products = image_products(root)
    products["label"] = products["prdtypecode"].map({code: i for i, code in enumerate(codes)})
    train = products[products["split"] == "train"]
    fit = train[~reserved_for_fusion(train)]
    val = products[products["split"] == "val"]
    paths = dict(zip(products["index"], products["image_path"]))
    scores = {}
    for backbone in args.backbones.split(","):
        cache = FeatureCache(fingerprint(root), paths, args.cache_dir, backbone=backbone)
        x = np.concatenate([cache.features(View(kind), fit["index"]) for kind in ("plain", "flip")])
        y = np.tile(fit["label"].to_numpy(), 2)
        head = train_image_head(x, y, HeadConfig(ensemble=1, embedding_dim=128), len(codes))
        for mode in args.modes.split(","):
            val_x = np.mean([cache.features(View(kind), val["index"]) for kind in TTA_MODES[mode]["views"]], axis=0)
            val_y = val["label"].to_numpy()
            head_f1 = f1_scores(val_y, head.predict(val_x).argmax(axis=1), range(len(codes))).weighted
            scores[backbone, mode] = (probe_f1(x, y, val_x, val_y, codes), head_f1)
            print(f"  {backbone:19s} {mode:10s} probe {scores[backbone, mode][0]:.4f}  head {head_f1:.4f}",
                  file=sys.stderr, flush=True)
    return scores


def speed(args, images_by_size) -> dict[tuple[str, str], float]:
    from common.runtime import OnnxRunner
    from image_service.architecture import variant
    from image_service.backbone_onnx import build_backbone_onnx
    from image_service.views import TTA_MODES, apply_views

    runners = {}
    for backbone in args.backbones.split(","):
        for mode in args.modes.split(","):
            views = TTA_MODES[mode]["views"]
            runner = OnnxRunner(build_backbone_onnx(backbone=backbone, views=len(views)).SerializeToString(),
                                intra_op_threads=args.threads or None)
            batch = images_by_size[variant(backbone).input_size]
            runner(image=apply_views(batch, views))  # warm-up
            runners[backbone, mode] = (runner, views, batch)
    times: dict[tuple[str, str], list[float]] = {key: [] for key in runners}
    for _ in range(args.rounds):
        for key, (runner, views, batch) in runners.items():
            start = time.perf_counter()
            runner(image=apply_views(batch, views))
            times[key].append((time.perf_counter() - start) * 1000 / len(batch))
    return {key: float(np.median(value)) for key, value in times.items()}


def main(argv: list[str] | None = None) -> int:
    from image_service.architecture import variant
    from image_service.preprocessing import prepare_path
    from training.image_model import image_products

    args = parse_args(argv)
    root = data_dir(args.data)
    codes = [c.code for c in load_categories(root)]
    scores = quality(args, root, codes)
    val_paths = image_products(root).query("split == 'val'")["image_path"].head(args.batch).tolist()
    sizes = {variant(b).input_size for b in args.backbones.split(",")}
    images_by_size = {size: np.stack([prepare_path(p, size=size) for p in val_paths]) for size in sizes}
    ms = speed(args, images_by_size)
    base = ms[args.backbones.split(",")[0], args.modes.split(",")[0]]
    print(f"\n| backbone | input | views | probe F1 | head F1 | ms/image (ONNX, batch {args.batch}) | x first row |")
    print("|---|---|---|---|---|---|---|")
    for (backbone, mode), (probe, head) in scores.items():
        print(f"| {backbone} | {variant(backbone).input_size} | {mode} | {probe:.4f} | {head:.4f} | "
              f"{ms[backbone, mode]:.1f} | {ms[backbone, mode] / base:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
