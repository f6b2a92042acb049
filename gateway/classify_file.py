"""A file of products in, a file of predictions out, through ClassifyStream; resumable.

    python -m gateway.client classify-file X_test.csv --images images/ --out predictions.csv

The input is the challenge's layout: `index,designation,description,productid,imageid` (the
index column may be unnamed), images in `--images` named `image_<imageid>_product_<productid>.jpg`
(no such file: a text-only product). The output has one line per input row,
`index,prdtypecode,score,needs_review,modalities,degraded,error` (`needs_review`: the answer's own
flag, its top score below the review threshold of the model that produced it), appended and
flushed as each answer comes and fsynced on exit. Run the same command again after an interruption (Ctrl-C, a
gateway killed): rows already in the output are skipped; a truncated last line (a crash in the
middle of a write) is cut off and its row classified again; no row is written twice. A row the
gateway refused (bad input, no modality could answer) is written with its error and counts as done.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import grpc
from tqdm import tqdm

from gateway.client import ClassifierClient, Product, StreamAnswer, add_connection_arguments, connection_tls

COLUMNS = ["index", "prdtypecode", "score", "needs_review", "modalities", "degraded", "error"]
INPUT_COLUMNS = ("designation", "description", "productid", "imageid")


class FileError(Exception):
    """An input or output file this command cannot use; the message says why."""


@dataclass(frozen=True)
class Row:
    index: str
    designation: str
    description: str
    image: Path | None  # None: no image file, a text-only product


def image_path(images: Path, productid: str, imageid: str) -> Path:
    return images / f"image_{imageid}_product_{productid}.jpg"


def read_rows(path: Path, images: Path | None) -> list[Row]:
    """The input rows, in file order; refuses missing columns and repeated indices."""
    with path.open(newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        fields = reader.fieldnames or []
        missing = [column for column in INPUT_COLUMNS if column not in fields]
        if missing or not fields:
            raise FileError(f"{path}: no column {', '.join(missing)}; expected index,{','.join(INPUT_COLUMNS)}")
        index_column = "index" if "index" in fields else fields[0]
        rows, seen = [], set()
        for line, record in enumerate(reader, start=2):
            index = (record[index_column] or "").strip()
            if not index:
                raise FileError(f"{path}: record {line}: empty {index_column or 'index'} column")
            if index in seen:
                raise FileError(f"{path}: index {index} appears twice")
            seen.add(index)
            image = image_path(images, record["productid"], record["imageid"]) if images else None
            rows.append(Row(index, record["designation"] or "", record["description"] or "",
                            image if image is not None and image.is_file() else None))
    return rows


def written_indices(out: Path) -> set[str]:
    """The indices already in `out`, after cutting off a truncated last line; a new or empty
    file gets the header."""
    if not out.exists() or out.stat().st_size == 0:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(",".join(COLUMNS) + "\n", encoding="utf-8")
        return set()
    with out.open("r+b") as file:
        data = file.read()
        if not data.endswith(b"\n"):
            data = data[:data.rfind(b"\n") + 1]
            file.truncate(len(data))
    if not data:
        return written_indices(out)
    reader = csv.reader(io.StringIO(data.decode("utf-8"), newline=""))
    header = next(reader)
    if header != COLUMNS:
        raise FileError(f"{out}: columns {','.join(header)}, expected {','.join(COLUMNS)}: "
                        "not an output of classify-file")
    return {record[0] for record in reader if record}


class PredictionWriter:
    """Appends one line per answer and flushes it, so an interruption loses no written answer."""

    def __init__(self, out: Path):
        self._file = out.open("a", newline="", encoding="utf-8")
        self._csv = csv.writer(self._file, lineterminator="\n")

    def write(self, result: StreamAnswer) -> None:
        if result.answer is None:
            message = " ".join(result.error_message.split())  # one line per row, always
            self._csv.writerow([result.id, "", "", "", "", "", f"{result.error_code}: {message}"])
        else:
            best = result.answer.categories[0]
            self._csv.writerow([result.id, best.code, f"{best.score:.4f}", str(result.answer.needs_review).lower(),
                                "+".join(result.answer.modalities),
                                str(result.answer.degraded).lower(), ""])
        self._file.flush()

    def close(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()


def products(rows: list[Row]) -> Iterator[Product]:
    """Read lazily: an image is loaded only when the stream is ready to take its product."""
    for row in rows:
        yield Product(row.designation, row.description, row.image.read_bytes() if row.image else b"", id=row.index)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.client classify-file",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("input", type=Path, help="CSV: index,designation,description,productid,imageid")
    parser.add_argument("--images", type=Path, help="folder of image_<imageid>_product_<productid>.jpg")
    parser.add_argument("--out", type=Path, required=True, help="predictions CSV, created or resumed")
    parser.add_argument("--timeout", type=float, help="deadline of the whole stream in seconds (default: none; "
                        "each group of products has the gateway's own)")
    add_connection_arguments(parser)
    args = parser.parse_args(argv)
    tls = connection_tls(parser, args)
    if args.images is not None and not args.images.is_dir():
        parser.error(f"--images {args.images}: not a folder")
    try:
        rows = read_rows(args.input, args.images)
        done = written_indices(args.out)
    except (FileError, OSError, UnicodeDecodeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    todo = [row for row in rows if row.index not in done]
    if not todo:
        print(f"all {len(rows)} rows are already in {args.out}", file=sys.stderr)
        return 0
    expected = {row.index for row in todo}
    writer = PredictionWriter(args.out)
    bar = tqdm(total=len(rows), initial=len(rows) - len(todo), unit="row", desc="classify", file=sys.stderr)
    started, written, errors, degraded, status = time.monotonic(), 0, 0, 0, 0
    try:
        with ClassifierClient(args.address, tls=tls) as client:
            for result in client.classify_stream(products(todo), top_k=1, timeout=args.timeout):
                if result.id not in expected:
                    raise RuntimeError(f"the gateway answered index {result.id!r}, which was not asked or answered twice")
                expected.discard(result.id)
                writer.write(result)
                written += 1
                errors += result.answer is None
                degraded += result.answer is not None and result.answer.degraded
                bar.update(1)
        if expected:
            raise RuntimeError(f"the stream ended with {len(expected)} rows unanswered")
    except grpc.RpcError as error:
        status = 1
        print(f"\nerror: the stream failed: {error.code().name}: {error.details()}", file=sys.stderr)
    except KeyboardInterrupt:
        status = 130
        print("\ninterrupted", file=sys.stderr)
    finally:
        writer.close()
        bar.close()
    seconds = time.monotonic() - started
    print(f"{written} rows in {seconds:.1f} s ({written / seconds:.1f} rows/s): {errors} errors, {degraded} degraded; "
          f"{len(rows) - len(expected)} of {len(rows)} rows in {args.out}", file=sys.stderr)
    if expected:
        print(f"{len(expected)} rows left: run the same command again to resume", file=sys.stderr)
    return status
