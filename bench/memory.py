"""`make bench-memory`: memory (PSS) of each model service process after warm-up, per runtime.

Starts each service on the bundles of `--models` as `make up` would, one at a time, sends it one
real call (so the model has run), and reads the process's proportional set size (PSS: shared
pages divided among the processes that map them, so the four services' figures add up) with
psutil. Then, for a service on ONNX Runtime, one TF Serving GetModelMetadata call, to show what
loading TensorFlow for that API costs. Prints PSS and RSS; bench/RESULTS.md keeps the figures.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import psutil

from ops.service_process import ServiceProcess
from training.data import PROJECT_ROOT

MIB = 1024 * 1024


def memory_mib(process: ServiceProcess) -> tuple[float, float]:
    """(PSS, RSS) in MiB. PSS shares a library's pages among every process mapping it, so on a
    machine where other TensorFlow processes run it is lower than in a pod; RSS counts them whole."""
    info = psutil.Process(process.process.pid).memory_full_info()
    return info.pss / MIB, info.rss / MIB


def one_call(module: str, process: ServiceProcess) -> None:
    """A real call through the domain API, so the model has run once more after warm-up."""
    import numpy as np

    if module == "image_service":
        from rakuten.v1 import image_pb2, image_pb2_grpc
        from tests.synthetic_images import encode, noisy

        request = image_pb2.EncodeImageRequest(images=[image_pb2.ImageInput(data=encode(noisy(), "JPEG"))])
        image_pb2_grpc.ImageEncoderStub(process.channel).Encode(request, timeout=60)
    elif module == "fusion_service":
        from rakuten.v1 import fusion_pb2, fusion_pb2_grpc
        from common.model_bundle import read_bundle

        inputs = read_bundle(process.models, "fusion").metadata["inputs"]
        pair = fusion_pb2.FusionInput(text_embedding=np.zeros(inputs["text_embedding"]["shape"][-1]),
                                      image_embedding=np.zeros(inputs["image_embedding"]["shape"][-1]))
        fusion_pb2_grpc.FusionStub(process.channel).Fuse(fusion_pb2.FuseRequest(inputs=[pair]), timeout=60)
    elif module == "text_service":
        from rakuten.v1 import text_pb2, text_pb2_grpc

        request = text_pb2.EncodeTextRequest(texts=[text_pb2.TextInput(designation="Piscine tubulaire 300 x 76 cm")])
        text_pb2_grpc.TextEncoderStub(process.channel).Encode(request, timeout=60)


def tf_serving_call(process: ServiceProcess, model: str) -> None:
    from tensorflow_serving.apis import get_model_metadata_pb2, prediction_service_pb2_grpc

    prediction_service_pb2_grpc.PredictionServiceStub(process.channel).GetModelMetadata(
        get_model_metadata_pb2.GetModelMetadataRequest(model_spec={"name": model}, metadata_field=["signature_def"]),
        timeout=300)


def measure(module: str, runtime: str, models: Path, logs: Path) -> dict:
    process = ServiceProcess(module, ["--models-dir", str(models), "--model-poll-seconds", "0", "--runtime", runtime,
                                      "--log-level", "WARNING"], logs)
    process.models = models
    process.start(timeout=300)
    try:
        one_call(module, process)
        time.sleep(1)
        row = {"service": module, "runtime": runtime, "mib": memory_mib(process)}
        if runtime == "onnx":
            tf_serving_call(process, module.removesuffix("_service"))
            row["after_tf_serving_call_mib"] = memory_mib(process)
        return row
    finally:
        process.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=PROJECT_ROOT / "models")
    parser.add_argument("--services", default="image_service:onnx,image_service:tensorflow,"
                                               "fusion_service:onnx,fusion_service:tensorflow,text_service:auto")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as logs:
        for entry in args.services.split(","):
            module, runtime = entry.split(":")
            rows.append(measure(module, runtime, args.models.resolve(), Path(logs)))
            pss, rss = rows[-1]["mib"]
            extra = rows[-1].get("after_tf_serving_call_mib")
            print(f"{module:<15} {runtime:<11} PSS {pss:6.0f} MiB  RSS {rss:6.0f} MiB"
                  + (f"   after a TF Serving call: PSS {extra[0]:6.0f}, RSS {extra[1]:6.0f} MiB" if extra else ""),
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
