"""Model bundles on disk and the repository that serves the highest version."""

import asyncio
import json

import pytest

from common.errors import NotReady
from common.model_bundle import read_bundle, versions, write_bundle
from common.model_repository import ModelRepository


def write_fake_bundle(root, name, payload, version=None):
    def export(folder):
        (folder / "weights.txt").write_text(payload)

    return write_bundle(root, name, export, {"labels": [{"code": 10, "name": "Livre occasion"}]}, version)


def load_fake(bundle):
    text = (bundle.path / "weights.txt").read_text()
    if text == "corrupt":
        raise ValueError("unreadable weights")
    return text


def test_write_bundle_numbers_versions_and_writes_metadata(tmp_path):
    first = write_fake_bundle(tmp_path, "text", "a")
    second = write_fake_bundle(tmp_path, "text", "b")
    assert (first.version, second.version) == (1, 2)
    metadata = json.loads((second.path / "metadata.json").read_text())
    assert metadata["name"] == "text" and metadata["version"] == 2 and "created_at" in metadata
    assert read_bundle(tmp_path, "text").version == 2
    assert read_bundle(tmp_path, "text").labels[0].name == "Livre occasion"
    with pytest.raises(FileExistsError):
        write_fake_bundle(tmp_path, "text", "c", version=2)


def test_incomplete_version_folders_are_ignored(tmp_path):
    write_fake_bundle(tmp_path, "text", "a")
    (tmp_path / "text" / "7").mkdir()  # no metadata.json: still being copied
    (tmp_path / "text" / "notes").mkdir()
    assert versions(tmp_path, "text") == [1]


def test_failed_export_leaves_nothing_behind(tmp_path):
    def broken(folder):
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_bundle(tmp_path, "text", broken, {"labels": []})
    assert list((tmp_path / "text").iterdir()) == []


def test_repository_serves_highest_and_swaps_to_newer_versions(tmp_path):
    write_fake_bundle(tmp_path, "text", "one")
    write_fake_bundle(tmp_path, "text", "two")
    repository = ModelRepository(tmp_path, "text", load_fake, poll_seconds=0)
    with pytest.raises(NotReady):
        repository.current()

    async def scenario():
        assert await repository.load_latest() is True
        assert repository.current()[1] == "two"
        assert await repository.load_latest() is False
        write_fake_bundle(tmp_path, "text", "three")
        assert await repository.load_latest() is True
        return repository.current()

    bundle, model = asyncio.run(scenario())
    assert (bundle.version, model) == (3, "three")


def test_a_broken_new_version_keeps_the_old_one_serving(tmp_path):
    write_fake_bundle(tmp_path, "text", "good")
    repository = ModelRepository(tmp_path, "text", load_fake, poll_seconds=0)

    async def scenario():
        await repository.load_latest()
        write_fake_bundle(tmp_path, "text", "corrupt")
        assert await repository.load_latest() is False
        assert await repository.load_latest() is False  # not retried
        return repository.current()

    bundle, model = asyncio.run(scenario())
    assert (bundle.version, model) == (1, "good")


def test_watcher_picks_up_a_new_version_without_restart(tmp_path):
    write_fake_bundle(tmp_path, "text", "one")
    repository = ModelRepository(tmp_path, "text", load_fake, poll_seconds=0.05)

    async def scenario():
        await repository.load_latest()
        repository.start_watching()
        write_fake_bundle(tmp_path, "text", "two")
        for _ in range(100):
            await asyncio.sleep(0.05)
            if repository.current()[0].version == 2:
                break
        await repository.stop()
        return repository.current()[1]

    assert asyncio.run(scenario()) == "two"


def test_no_bundle_at_all_is_an_error(tmp_path):
    repository = ModelRepository(tmp_path, "text", load_fake, poll_seconds=0)
    with pytest.raises(FileNotFoundError, match="no loadable version"):
        asyncio.run(repository.load_latest())


def test_class_priors_are_exported_for_the_version_serving_and_follow_a_swap(tmp_path):
    from prometheus_client import REGISTRY

    def bundle(priors, version):
        write_bundle(tmp_path, "priors", lambda folder: (folder / "weights.txt").write_text("w"),
                     {"labels": [{"code": int(c), "name": c} for c in priors], "class_priors": priors}, version)

    def prior(code):
        return REGISTRY.get_sample_value("model_class_prior", {"model": "priors", "code": code})

    bundle({"10": 0.25, "2583": 0.75}, 1)
    repository = ModelRepository(tmp_path, "priors", load_fake, poll_seconds=0)
    asyncio.run(repository.load_latest())
    assert repository.current()[0].class_priors == {10: 0.25, 2583: 0.75}
    assert (prior("10"), prior("2583")) == (0.25, 0.75)
    bundle({"2583": 0.4, "2705": 0.6}, 2)
    asyncio.run(repository.load_latest())
    assert (prior("10"), prior("2583"), prior("2705")) == (None, 0.4, 0.6)


def test_a_bundle_without_class_priors_exports_none(tmp_path):
    write_fake_bundle(tmp_path, "nopriors", "weights")
    assert read_bundle(tmp_path, "nopriors").class_priors == {}
