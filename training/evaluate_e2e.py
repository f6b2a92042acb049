"""`make eval-e2e`: every `split == val` product through the running gateway, scored by group.

    python -m training.evaluate_e2e [--data PATH] [--address localhost:50051] [--report reports/e2e]

Products go as they are in the data: text only, image only, or both, so what is measured is what
is served (preprocessing, models, fusion and the gateway's choices). Weighted and macro F1 per
group and overall; macro is over the classes present in the group. Degraded answers are counted:
on a healthy stack there are none. Per group, the coverage: the share of answers not flagged
`needs_review`, and how often those are right.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import grpc

from common.services import GATEWAY
from gateway.client import ClassifierClient, Product
from training.data import data_dir, fingerprint, load_products
from training.reports import f1_scores

GROUPS = ("text only", "image only", "text + image", "all")


def group_of(has_text: bool, has_image: bool) -> str:
    return "text + image" if has_text and has_image else "text only" if has_text else "image only"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.evaluate_e2e", description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="data folder (default: $RAKUTEN_DATA or ../shared/rakuten)")
    parser.add_argument("--address", default=GATEWAY.local_address, help="gateway host:port")
    parser.add_argument("--batch", type=int, default=16, help="products per ClassifyBatch call")
    parser.add_argument("--concurrency", type=int, default=4, help="calls in flight")
    parser.add_argument("--report", type=Path, default=Path("reports/e2e"))
    args = parser.parse_args(argv)

    root = data_dir(args.data)
    val = load_products(root)
    val = val[val["split"] == "val"].reset_index(drop=True)
    products, truth, groups = [], [], []
    for row in val.itertuples():
        has_text, has_image = bool(row.has_text), bool(row.has_image)
        image = Path(row.image_path).read_bytes() if has_image else b""
        products.append(Product(row.designation if has_text else "", row.description if has_text else "", image,
                                id=str(row.index)))
        truth.append(int(row.prdtypecode))
        groups.append(group_of(has_text, has_image))

    batches = [list(range(i, min(i + args.batch, len(products)))) for i in range(0, len(products), args.batch)]
    predictions: dict[int, int] = {}
    flagged: dict[int, bool] = {}
    models: dict[str, int] = {}  # the versions that answered (a swap during the run shows as the last one)
    degraded = 0
    started = time.perf_counter()
    with ClassifierClient(args.address, timeout=60) as client:
        def send(rows):
            return rows, client.classify_batch([products[i] for i in rows], top_k=1)

        try:
            with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
                for rows, answers in pool.map(send, batches):
                    for i, answer in zip(rows, answers):
                        predictions[i] = answer.categories[0].code
                        flagged[i] = answer.needs_review
                        models.update(answer.models)
                        degraded += answer.degraded
        except grpc.RpcError as error:
            print(f"error from the gateway at {args.address}: {error.code().name}: {error.details()}\n"
                  f"is the stack up? (make up)", file=sys.stderr)
            return 1
    elapsed = time.perf_counter() - started

    results = {}
    print(f"{'group':<14} {'n':>5}  {'weighted F1':>11}  {'macro F1':>8}  {'coverage':>8}  {'accepted right':>14}")
    for group in GROUPS:
        rows = [i for i in range(len(products)) if group == "all" or groups[i] == group]
        y_true = [truth[i] for i in rows]
        y_pred = [predictions[i] for i in rows]
        if not rows:
            continue
        scores = f1_scores(y_true, y_pred, sorted(set(y_true)))
        accepted = [i for i in rows if not flagged[i]]
        coverage = len(accepted) / len(rows)
        right = sum(predictions[i] == truth[i] for i in accepted) / len(accepted) if accepted else float("nan")
        results[group] = {"rows": scores.rows, "weighted_f1": scores.weighted, "macro_f1": scores.macro,
                          "coverage": coverage, "accepted_precision": None if not accepted else right}
        print(f"{group:<14} {scores.rows:>5}  {scores.weighted:>11.3f}  {scores.macro:>8.3f}  {coverage:>8.3f}  "
              f"{right:>14.3f}")
    print(f"{len(products)} products in {elapsed:.1f} s through {args.address}; degraded answers: {degraded}; "
          f"models: {', '.join(f'{name} v{version}' for name, version in sorted(models.items()))}")
    args.report.mkdir(parents=True, exist_ok=True)
    (args.report / "metrics.json").write_text(json.dumps(
        {"evaluated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
         "data": {"path": str(root), "fingerprint": fingerprint(root), "split": "val", "rows": len(products)},
         "models": models, "groups": results, "degraded": degraded, "seconds": elapsed, "address": args.address},
        indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
