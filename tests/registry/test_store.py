"""The model registry: versions, aliases under concurrency, integrity checks."""

import multiprocessing
import os
import re

import pyarrow.fs as pafs
import pytest

from kiln.errors import IntegrityError, ModelNotFoundError, RegistryError
from kiln.registry import WEIGHTS, ModelRegistry
from kiln.registry.store import MANIFEST
from tests.registry.counting import CountingHandler


def files(tag: str) -> dict[str, bytes]:
    return {WEIGHTS: f"weights {tag}".encode() * 100, "model.json": b"{}"}


@pytest.fixture
def registry(tmp_path) -> ModelRegistry:
    return ModelRegistry(str(tmp_path / "registry"))


def test_versions_aliases_and_references(registry):
    one = registry.register("m", files("1"), alias="staging")
    two = registry.register("m", files("2"))
    assert (one.version, two.version) == (1, 2)
    assert registry.resolve("m").version == 2
    assert registry.resolve("m@1").version == 1
    assert registry.resolve("m@staging").version == 1
    registry.promote("m", 2, "production")
    assert registry.aliases("m") == {"staging": 1, "production": 2}
    assert registry.models() == ["m"]


@pytest.mark.parametrize(
    "ref, message",
    [
        ("nope", "no model named 'nope'"),
        ("m@9", "no version 9"),
        ("m@prod", "no alias 'prod'"),
        ("Bad Ref!", "not a model reference"),
    ],
)
def test_unknown_references(registry, ref, message):
    registry.register("m", files("1"))
    with pytest.raises(ModelNotFoundError, match=message):
        registry.resolve(ref)


def test_promoting_a_missing_version_is_refused(registry):
    registry.register("m", files("1"))
    with pytest.raises(ModelNotFoundError):
        registry.promote("m", 5, "production")
    with pytest.raises(RegistryError):
        registry.promote("m", 1, "Not Valid")


def test_a_run_registers_once(registry):
    first = registry.register("m", files("1"), run_id="run-a")
    again = registry.register("m", files("1"), run_id="run-a")
    assert first.version == again.version == 1 and registry.versions("m") == [1]


def test_a_run_registered_again_gets_its_alias_unless_a_newer_version_has_it(registry):
    """A job stopped between registering and promoting, then retried, ends promoted; a run
    registered again after a newer version was promoted leaves the newer one there."""
    registry.register("m", files("1"), alias="staging")
    registry.register("m", files("2"), run_id="run-b")  # stopped before its alias was written
    assert registry.register("m", files("2"), alias="staging", run_id="run-b").version == 2
    assert registry.aliases("m") == {"staging": 2}
    registry.register("m", files("3"), alias="staging")
    assert registry.register("m", files("2"), alias="staging", run_id="run-b").version == 2
    assert registry.aliases("m") == {"staging": 3}


def test_truncated_weights_are_refused(registry):
    version = registry.register("m", files("1"))
    path = f"{version.path}/{WEIGHTS}"
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(IntegrityError, match="corrupt"):
        registry.read(registry.resolve("m@1"), WEIGHTS)


def test_missing_and_tampered_files_are_refused(registry):
    version = registry.register("m", files("1"))
    with open(f"{version.path}/{WEIGHTS}", "r+b") as f:
        f.write(b"X")  # same size, different bytes
    with pytest.raises(IntegrityError, match="sha256"):
        registry.read(registry.resolve("m@1"), WEIGHTS)
    os.remove(f"{version.path}/model.json")
    with pytest.raises(IntegrityError, match="missing"):
        registry.read(registry.resolve("m@1"), "model.json")


def test_a_version_without_manifest_is_invisible(registry):
    registry.register("m", files("1"))
    os.makedirs(f"{registry.root}/m/2")  # a writer that died half-way
    assert registry.versions("m") == [1]
    assert registry.register("m", files("3")).version == 3


def _promote_many(uri: str, version: int, rounds: int) -> None:
    registry = ModelRegistry(uri)
    for _ in range(rounds):
        registry.promote("m", version, "production")


def _read_many(uri: str, rounds: int, errors) -> None:
    registry = ModelRegistry(uri)
    for _ in range(rounds):
        try:
            assert registry.resolve("m@production").version in (1, 2, 3)
        except Exception as e:  # any torn read is a failure
            errors.put(repr(e))


def test_concurrent_promotions_never_break_the_alias(registry):
    for tag in "123":
        registry.register("m", files(tag))
    registry.promote("m", 1, "production")
    context = multiprocessing.get_context("spawn")
    errors = context.Queue()
    workers = [
        context.Process(target=_promote_many, args=(registry.uri, v, 150)) for v in (1, 2, 3)
    ]
    workers += [
        context.Process(target=_read_many, args=(registry.uri, 300, errors)) for _ in range(2)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
        assert w.exitcode == 0
    assert errors.empty(), errors.get()
    assert registry.resolve("m@production").version in (1, 2, 3)
    assert not [f for f in os.listdir(f"{registry.root}/m/aliases") if f.endswith(".tmp")]


def _register_one(uri: str, tag: str) -> None:
    ModelRegistry(uri).register("m", files(tag))


def test_concurrent_registrations_get_distinct_versions(registry):
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_register_one, args=(registry.uri, str(i))) for i in range(6)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert registry.versions("m") == [1, 2, 3, 4, 5, 6]
    contents = {registry.read(registry.resolve(f"m@{v}"), WEIGHTS) for v in range(1, 7)}
    assert len(contents) == 6


def test_resolving_costs_the_same_with_three_hundred_versions(registry):
    """A replica resolves its reference every watch interval, and its metadata lists the
    versions: on an object store, a check per version was a request per version, each time."""
    for i in range(300):
        registry.register("m", files(str(i)), alias="production" if i == 7 else None)
    os.remove(f"{registry.root}/m/300/{MANIFEST}")  # a version still being written
    counting = CountingHandler()
    registry.fs = pafs.PyFileSystem(counting)

    def cost(call):
        counting.calls.clear()
        value = call()
        return value, sum(counting.calls.values())

    assert cost(lambda: registry.resolve("m@production").version) == (8, 2)
    assert cost(lambda: registry.resolve("m@12").version) == (12, 1)
    assert cost(lambda: registry.resolve("m").version) == (299, 3)  # 300 is not done
    versions, requests = cost(lambda: registry.versions("m"))
    assert versions == list(range(1, 300)) and requests == 1
    assert cost(lambda: registry.promote("m", 9, "staging"))[1] <= 1
    with pytest.raises(ModelNotFoundError, match="no version 300"):
        registry.resolve("m@300")


def test_an_object_store_registry_resolves_and_reports_what_is_missing(registry):
    """Arrow's in-memory filesystem (as an object store: no rename-free mkdir, keys not
    folders): versions, aliases and the errors for a missing alias, version and model."""
    from pyarrow._fs import _MockFileSystem

    registry.fs, registry.root, registry.local = _MockFileSystem(), "bucket/registry", False
    for i in range(3):
        registry.register("m", files(str(i)), alias="production" if i == 1 else None)
    assert registry.versions("m") == [1, 2, 3] and registry.aliases("m") == {"production": 2}
    assert [registry.resolve(r).version for r in ("m", "m@production", "m@1")] == [3, 2, 1]
    for ref, message in [
        ("m@nope", "m has no alias 'nope' (aliases: production)"),
        ("m@9", "m has no version 9 (versions: 1, 2, 3)"),
        ("x@production", "no model named 'x'"),
    ]:
        with pytest.raises(ModelNotFoundError, match=re.escape(message)):
            registry.resolve(ref)


@pytest.mark.parametrize("store", ["local", "object store"])
def test_a_deleted_version_is_gone_and_its_number_never_comes_back(registry, store):
    if store == "object store":
        from pyarrow._fs import _MockFileSystem

        registry.fs, registry.root, registry.local = _MockFileSystem(), "bucket/registry", False
    registry.register("m", files("1"), alias="production")
    registry.register("m", files("2"), run_id="run-2")
    registry.register("m", files("3"), alias="staging")

    with pytest.raises(RegistryError, match=r"m@3 is @staging: point staging at another"):
        registry.delete("m", 3)
    assert registry.delete("m", 2) == []
    assert registry.versions("m") == [1, 3]
    with pytest.raises(ModelNotFoundError, match=re.escape("no version 2 (it was deleted)")):
        registry.resolve("m@2")
    assert registry.delete("m", 3, with_aliases=True) == ["staging"]
    assert registry.aliases("m") == {"production": 1} and registry.resolve("m").version == 1
    assert registry.register("m", files("4")).version == 4  # never 2 or 3 again
    # the run that registered version 2 registers anew, and the deleted files are gone
    assert registry.register("m", files("2"), run_id="run-2").version == 5
    leftover = registry._list(f"{registry.root}/m/2", recursive=True)
    assert [i.base_name for i in leftover if i.type == pafs.FileType.File] == ["DELETED.json"]
    with pytest.raises(ModelNotFoundError, match="no version 2 to delete"):
        registry.delete("m", 2)
