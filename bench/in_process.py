"""The three models in this process, on the services' own code paths, without gRPC: the reference
that serving is measured against.

text:   the text pipeline (`preprocess`, on a thread pool as text_service runs it) + the text model
image:  `prepare_image` (on a thread pool as image_service decodes) + backbone and head
fusion: the fusion model on the text and image embeddings of the same products
"""

from __future__ import annotations

import concurrent.futures
import os
import statistics
import time
from pathlib import Path
from typing import Callable, Sequence, TypeVar

import numpy as np

from common.model_bundle import read_bundle
from gateway.client import Product
from gateway.pipeline import has_text

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads: no CUDA chatter in the report

T = TypeVar("T")


def batch_throughput(label: str, run_batch: Callable[[list[T]], object], items: Sequence[T],
                     batch_sizes: Sequence[int], seconds: float) -> dict[int, float]:
    """Items per second of `run_batch` at each batch size, cycling through `items`."""
    throughput = {}
    for size in batch_sizes:
        run_batch([items[i % len(items)] for i in range(size)])  # a new shape: trace before timing
        done, offset = 0, 0
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            run_batch([items[(offset + i) % len(items)] for i in range(size)])
            offset += size
            done += size
        throughput[size] = done / (time.perf_counter() - started)
        print(f"  {label}, batch {size:>3}: {throughput[size]:8.1f} items/s", flush=True)
    return throughput


class Pipelines:
    """The released text, image and fusion bundles loaded here, with the services' thread pools."""

    def __init__(self, models: Path, preprocess_threads: int = 2, decode_threads: int = 2):
        from fusion_service.model import FusionModel
        from image_service.model import ImageModel
        from text_service.model import TextModel

        self.text = TextModel(read_bundle(models, "text"))
        self.image = ImageModel(read_bundle(models, "image"))
        self.fusion = FusionModel(read_bundle(models, "fusion"))
        self._text_pool = concurrent.futures.ThreadPoolExecutor(preprocess_threads)
        self._image_pool = concurrent.futures.ThreadPoolExecutor(decode_threads)

    def close(self) -> None:
        self._text_pool.shutdown()
        self._image_pool.shutdown()

    def run_text(self, texts: list[tuple[str, str]]):
        from text_service.preprocessing import preprocess

        return self.text.predict(list(self._text_pool.map(lambda t: preprocess(*t), texts)))

    def run_image(self, images: list[bytes]):
        from image_service.preprocessing import prepare_image

        size = self.image.input_shape[0]  # the bundle's backbone input size
        return self.image.predict(list(self._image_pool.map(lambda data: prepare_image(data, size=size), images)))

    def run_fusion(self, pairs: list[tuple[np.ndarray, np.ndarray]]):
        return self.fusion.predict(pairs)

    def run_product(self, product: Product) -> None:
        """One product alone, each model at batch 1, one after the other."""
        text = self.run_text([(product.designation, product.description)])[0] if has_text(product) else None
        image = self.run_image([product.image])[0] if product.image else None
        if text is not None and image is not None:
            self.run_fusion([(text.embedding, image.embedding)])

    def throughput(self, products: Sequence[Product], batch_sizes: Sequence[int], seconds: float) -> dict[str, dict]:
        """Each model's items/s at each batch size on the texts, images and pairs of `products`."""
        texts = [(p.designation, p.description) for p in products if has_text(p)]
        images = [p.image for p in products if p.image]
        paired = [p for p in products if has_text(p) and p.image] or [Product("x", image=images[0])]
        pairs = [(t.embedding, i.embedding) for t, i in zip(self.run_text([(p.designation, p.description)
                                                                           for p in paired]),
                                                          self.run_image([p.image for p in paired]))]
        return {"text": batch_throughput("text (preprocess + model)", self.run_text, texts, batch_sizes, seconds),
                "image": batch_throughput("image (decode + backbone + head)", self.run_image, images,
                                          batch_sizes, seconds),
                "fusion": batch_throughput("fusion", self.run_fusion, pairs, batch_sizes, seconds)}

    def single_product_seconds(self, products: Sequence[Product], count: int) -> list[float]:
        """Time of each of the first `count` products alone (after one unmeasured pass)."""
        chosen = list(products[:count])
        for product in chosen[:5]:
            self.run_product(product)
        timings = []
        for product in chosen:
            started = time.perf_counter()
            self.run_product(product)
            timings.append(time.perf_counter() - started)
        return timings


def mix_throughput(products: Sequence[Product], best: dict[str, float]) -> float:
    """Products per second when each model runs at its best batch size and the models take turns:
    the time of the texts, the images and the pairs of `products`, added up."""
    counts = {"text": sum(map(has_text, products)), "image": sum(bool(p.image) for p in products),
              "fusion": sum(has_text(p) and bool(p.image) for p in products)}
    seconds = sum(counts[name] / best[name] for name in counts if counts[name])
    return len(products) / seconds


def median_ms(seconds: Sequence[float]) -> float:
    return statistics.median(seconds) * 1000
