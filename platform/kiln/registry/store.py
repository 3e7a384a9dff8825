"""The model store: versioned models on any `pyarrow.fs` filesystem (a local path, s3://, gs://).

    registry = ModelRegistry.open()                # KILN_REGISTRY or KILN_HOME/registry
    version = registry.register("digits-cnn", files, alias="staging", run_id=...)
    weights = registry.read(registry.resolve("digits-cnn@staging"), WEIGHTS)  # sha256-checked

Layout, one folder per version, complete once its MANIFEST.json (written last) exists:

    <root>/<name>/<version>/weights.safetensors  model.json  spec.yaml  metrics.json
                            lineage.json  curves.png  MANIFEST.json (sha256 of each file)
    <root>/<name>/aliases/<alias>.json    {"version": 3}, replaced atomically
    <root>/<name>/runs/<run_id>.json      the version a training run registered (idempotence)
    <root>/<name>/<version>/DELETED.json  all that stays of a deleted version

Aliases are written to a temporary name and renamed over the old one, so a reader sees the
old or the new alias, never a torn one. Version numbers are claimed with an exclusive mkdir on
local disks; on object stores two writers racing for one number is possible and documented.
"""

import hashlib
import json
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import pyarrow.fs as pafs

from kiln.errors import IntegrityError, ModelNotFoundError, RegistryError
from kiln.settings import absolute, get_settings

MANIFEST = "MANIFEST.json"
TOMBSTONE = "DELETED.json"  # what stays of a deleted version: its number is never reused
WEIGHTS = "weights.safetensors"
REFERENCE = "reference.npy"  # training inputs that live traffic is compared with (drift)
REF = re.compile(r"^(?P<name>[a-z0-9][a-z0-9._-]*)(@(?P<tag>[A-Za-z0-9._-]+))?$")


@dataclass
class ModelVersion:
    name: str
    version: int
    path: str  # folder inside the registry's filesystem
    manifest: dict[str, Any] = field(repr=False)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


class ModelRegistry:
    def __init__(self, uri: str):
        self.uri = absolute(uri)
        try:
            self.fs, self.root = pafs.FileSystem.from_uri(self.uri)
        except (OSError, ValueError) as e:  # ArrowInvalid is a ValueError
            raise RegistryError(f"cannot open registry {uri}: {e}") from None
        self.local = isinstance(self.fs, pafs.LocalFileSystem)

    @classmethod
    def open(cls, uri: str | None = None) -> "ModelRegistry":
        return cls(uri or get_settings().registry_uri)

    # --- reading ---------------------------------------------------------------------------

    def models(self) -> list[str]:
        return sorted(
            info.base_name
            for info in self._list(self.root)
            if info.type == pafs.FileType.Directory and not info.base_name.startswith(".")
        )

    def versions(self, name: str) -> list[int]:
        """Complete versions only (a version without its manifest is still being written), in
        one listing of the model's folder: an object store lists a thousand keys a request,
        where a check of each version's manifest was a request each."""
        folder = f"{self.root}/{name}/"
        complete = []
        for info in self._list(folder.rstrip("/"), recursive=True):
            version, _, filename = info.path.removeprefix(folder).partition("/")
            if filename == MANIFEST and version.isdigit():
                complete.append(int(version))
        return sorted(complete)

    def aliases(self, name: str) -> dict[str, int]:
        found = {}
        for info in self._list(f"{self.root}/{name}/aliases"):
            if info.base_name.endswith(".json"):
                found[info.base_name[:-5]] = self._read_json(info.path)["version"]
        return found

    def resolve(self, ref: str) -> ModelVersion:
        """`name`, `name@3` or `name@production` (a bare name is its latest version), in a
        few requests however many versions there are: every serving replica resolves its
        reference again each watch interval."""
        match = REF.match(ref)
        if not match:
            raise ModelNotFoundError(f"{ref!r} is not a model reference (NAME[@VERSION|@ALIAS])")
        name, tag = match["name"], match["tag"]
        if tag is None or tag == "latest":
            return self._latest(name)
        version = int(tag) if tag.isdigit() else self._aliased(name, tag)
        path = self._dir(name, version)
        manifest = self._maybe_json(f"{path}/{MANIFEST}")
        if manifest is None:
            if not (versions := self.versions(name)):
                raise self._no_model(name)
            deleted = " (it was deleted)" if self._exists(f"{path}/{TOMBSTONE}") else ""
            raise ModelNotFoundError(
                f"{name} has no version {version}{deleted} ({_listed(versions)})"
            )
        return ModelVersion(name, version, path, manifest)

    def _latest(self, name: str) -> ModelVersion:
        """The newest complete version: the numbers from one listing of the model's folder,
        newest first, until one has its manifest (the newest, unless a writer is at it)."""
        for version in sorted(self._numbers(name), reverse=True):
            path = self._dir(name, version)
            if (manifest := self._maybe_json(f"{path}/{MANIFEST}")) is not None:
                return ModelVersion(name, version, path, manifest)
        raise self._no_model(name)

    def _aliased(self, name: str, alias: str) -> int:
        record = self._maybe_json(f"{self.root}/{name}/aliases/{alias}.json")
        if record is not None:
            return int(record["version"])
        if not self.versions(name):
            raise self._no_model(name)
        known = ", ".join(sorted(self.aliases(name))) or "none"
        raise ModelNotFoundError(f"{name} has no alias {alias!r} (aliases: {known})")

    def _no_model(self, name: str) -> ModelNotFoundError:
        return ModelNotFoundError(f"no model named {name!r} in {self.uri}")

    def read(self, version: ModelVersion, filename: str) -> bytes:
        """A file of a version, refused unless its size and sha256 match the manifest."""
        expected = version.manifest["files"].get(filename)
        if expected is None:
            raise IntegrityError(f"{version.ref} has no file {filename}")
        try:
            data = self._read_bytes(f"{version.path}/{filename}")
        except FileNotFoundError:
            raise IntegrityError(f"{version.ref}: {filename} is missing") from None
        if len(data) != expected["size"] or sha256(data) != expected["sha256"]:
            raise IntegrityError(
                f"{version.ref}: {filename} is corrupt ({len(data)} of {expected['size']} bytes, "
                "sha256 mismatch); re-register or restore it"
            )
        return data

    def read_json(self, version: ModelVersion, filename: str) -> Any:
        return json.loads(self.read(version, filename))

    # --- writing ---------------------------------------------------------------------------

    def register(
        self,
        name: str,
        files: dict[str, bytes],
        alias: str | None = None,
        run_id: str | None = None,
    ) -> ModelVersion:
        """Store a new version. A run that already registered (a retried job) gets its version
        back instead of a second one, and its alias where the alias is missing or older: a job
        that stopped between the two writes ends as if it had not stopped, and a version
        promoted since is not rolled back."""
        if run_id and (existing := self._version_of_run(name, run_id)) is not None:
            if alias and self.aliases(name).get(alias, 0) < existing:
                self.promote(name, existing, alias)
            return self.resolve(f"{name}@{existing}")
        version = self._claim_version(name)
        path = self._dir(name, version)
        checksums = {}
        for filename, data in files.items():
            self._write_bytes(f"{path}/{filename}", data)
            checksums[filename] = {"sha256": sha256(data), "size": len(data)}
        manifest = {"name": name, "version": version, "created_at": time.time(), "files": checksums}
        self._write_bytes(f"{path}/{MANIFEST}", json_bytes(manifest))
        if run_id:
            self._write_atomic(f"{self.root}/{name}/runs/{run_id}.json", {"version": version})
        if alias:
            self.promote(name, version, alias)
        return ModelVersion(name, version, path, manifest)

    def promote(self, name: str, version: int, alias: str) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9_-]*", alias) or alias == "latest":
            raise RegistryError(f"{alias!r} is not a valid alias (lowercase letters, digits, -_)")
        if not self._complete(name, version):
            raise ModelNotFoundError(f"{name} has no version {version} to promote")
        record = {"version": version, "updated_at": time.time()}
        self._write_atomic(f"{self.root}/{name}/aliases/{alias}.json", record)

    def delete(self, name: str, version: int, with_aliases: bool = False) -> list[str]:
        """Removes a version; returns the aliases removed with it (only with `with_aliases`:
        an alias is what serving and users follow, so one pointing here refuses). Its manifest
        goes first, so readers stop seeing the version at once, and a tombstone stays, so its
        number is never given to another model: a pinned `name@3` must not start meaning a
        different one. A run that registered it may register again."""
        if not self._complete(name, version):
            raise ModelNotFoundError(f"{name} has no version {version} to delete")
        pointing = sorted(a for a, v in self.aliases(name).items() if v == version)
        if pointing and not with_aliases:
            aliases = ", ".join(f"@{a}" for a in pointing)
            raise RegistryError(
                f"{name}@{version} is {aliases}: point {pointing[0]} at another version first "
                f"(kiln models promote {name} VERSION --alias {pointing[0]}), or delete the "
                "alias with it (--with-aliases)"
            )
        for alias in pointing:
            self.fs.delete_file(f"{self.root}/{name}/aliases/{alias}.json")
        path = self._dir(name, version)
        self.fs.delete_file(f"{path}/{MANIFEST}")
        self._write_bytes(f"{path}/{TOMBSTONE}", json_bytes({"deleted_at": time.time()}))
        for info in self._list(path, recursive=True):
            if info.type == pafs.FileType.File and info.base_name != TOMBSTONE:
                self.fs.delete_file(info.path)
        for info in self._list(f"{self.root}/{name}/runs"):
            if (
                info.base_name.endswith(".json")
                and self._read_json(info.path)["version"] == version
            ):
                self.fs.delete_file(info.path)
        return pointing

    # --- storage helpers -------------------------------------------------------------------

    def _dir(self, name: str, version: int) -> str:
        return f"{self.root}/{name}/{version}"

    def _numbers(self, name: str) -> list[int]:
        """The version folders of a model, complete or not, from one listing."""
        return [
            int(i.base_name) for i in self._list(f"{self.root}/{name}") if i.base_name.isdigit()
        ]

    def _complete(self, name: str, version: int) -> bool:
        return self._exists(f"{self._dir(name, version)}/{MANIFEST}")

    def _version_of_run(self, name: str, run_id: str) -> int | None:
        path = f"{self.root}/{name}/runs/{run_id}.json"
        return self._read_json(path)["version"] if self._exists(path) else None

    def _claim_version(self, name: str) -> int:
        self.fs.create_dir(f"{self.root}/{name}", recursive=True)
        version = max(self._numbers(name), default=0) + 1
        while True:
            path = self._dir(name, version)
            if self.local:
                try:
                    os.mkdir(path)  # exclusive: two writers never share a number
                    return version
                except FileExistsError:
                    version += 1
                    continue
            if not self._exists(path):
                self.fs.create_dir(path)
                return version
            version += 1

    def _write_atomic(self, path: str, record: dict[str, Any]) -> None:
        parent = path.rsplit("/", 1)[0]
        self.fs.create_dir(parent, recursive=True)
        temporary = f"{parent}/.{uuid.uuid4().hex}.tmp"
        self._write_bytes(temporary, json_bytes(record))
        self.fs.move(temporary, path)  # a rename locally; one PUT-copy on object stores

    def _write_bytes(self, path: str, data: bytes) -> None:
        with self.fs.open_output_stream(path) as out:
            out.write(data)

    def _read_bytes(self, path: str) -> bytes:
        with self.fs.open_input_stream(path) as stream:
            return bytes(stream.readall())

    def _read_json(self, path: str) -> Any:
        value = self._maybe_json(path)
        if value is None:
            raise IntegrityError(f"{path} is missing")
        return value

    def _maybe_json(self, path: str) -> Any:
        """The JSON file at `path`, or None where there is none (one read, no check first)."""
        try:
            return json.loads(self._read_bytes(path))
        except FileNotFoundError:
            return None
        except json.JSONDecodeError:
            raise IntegrityError(f"{path} is not valid JSON") from None

    def _exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def _list(self, path: str, recursive: bool = False) -> list[pafs.FileInfo]:
        try:
            selector = pafs.FileSelector(path, allow_not_found=True, recursive=recursive)
            return self.fs.get_file_info(selector)
        except OSError as e:
            raise RegistryError(f"cannot list {path}: {e}") from None


def _listed(versions: list[int]) -> str:
    """Versions for a message: all of a few, the range of many."""
    if len(versions) <= 10:
        return f"versions: {', '.join(map(str, versions))}"
    return f"versions {versions[0]} to {versions[-1]}, {len(versions)} in all"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def json_bytes(value: Any) -> bytes:
    """How every JSON file of a version is written: indented, keys sorted."""
    return json.dumps(value, indent=2, sort_keys=True).encode()
