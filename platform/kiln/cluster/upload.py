"""What `kiln submit` uploads as the job's working_dir, decided as Ray decides it, and checked
before Ray hashes, zips and sends it:

- every file the job needs (its spec, what it extends, `data.path`, `data.val_path`) must be
  in the upload: a project's .gitignore very often lists `data/`, Ray skips what it lists, and
  the job then failed on the cluster with "file not found" for a file that lies right here;
- the upload must fit the Jobs API, which takes at most 100 MiB in one request: a data file
  in the directory was zipped for seconds (minutes for gigabytes) and then answered with
  "Request failed with status code 413: Maximum request body size 104857600 exceeded".

    check_upload(job.working_dir, job.needs, job.excludes)   # one line, exit code 2, if not

Ray's packaging code is used to walk the directory (its default excludes, the job's, and the
.gitignore and .rayignore files it honours at every level), so that what is checked is what
Ray sends.
"""

import fnmatch
import glob
import logging
import os
import zlib
from pathlib import Path, PurePosixPath

from ray._private import ray_constants
from ray._private.runtime_env.packaging import _dir_travel, _get_excludes, _get_ignore_file

from kiln.errors import PreflightError

MAX_UPLOAD_BYTES = ray_constants.DASHBOARD_CLIENT_MAX_SIZE  # the dashboard's request cap
IGNORE_FILES = (".gitignore", ".rayignore")
GITIGNORE_ENV = ray_constants.RAY_RUNTIME_ENV_IGNORE_GITIGNORE
ELSEWHERE = (
    "keep large or private data where every node reads it (s3://, gs://, or file:///... on a "
    "filesystem every node mounts) and point the spec at it"
)

# Sizes are known before zipping, what they zip to is not: it is estimated (a few MiB read),
# and only an estimate this far over the cap is refused before anything is sent.
SLICES, SLICE_BYTES, SMALL_FILES_READ = 4, 256 * 1024, 16 * 2**20
ZIP_LEVEL = 6  # zlib's default, which Ray's ZIP_DEFLATED uses
ZIP_ENTRY_BYTES = 76  # a file's local header and central-directory record, besides its name
REFUSE_ABOVE = 1.1
LISTED, LISTED_FROM = 3, 2**20  # the largest files named, those of a MiB or more

QUIET = logging.getLogger(__name__)  # not Ray's line per ignore file it reads


def uploaded_files(working_dir: Path, excludes: list[str]) -> dict[str, int]:
    """Each file Ray will upload, by its path relative to `working_dir`, with its size."""
    files: dict[str, int] = {}

    def add(path: Path) -> None:
        if path.is_file():
            files[path.relative_to(working_dir).as_posix()] = path.stat().st_size

    excluded = [_get_excludes(working_dir, all_excludes(excludes))]
    _dir_travel(working_dir, excluded, add, gitignore_honoured(), logger=QUIET)
    return files


def all_excludes(excludes: list[str]) -> list[str]:
    return ray_constants.get_runtime_env_default_excludes() + list(excludes)


def gitignore_honoured() -> bool:
    """As Ray's Jobs SDK decides it."""
    return os.environ.get(GITIGNORE_ENV, "0") != "1"


def check_upload(working_dir: Path, needs: list[tuple[str, str]], excludes: list[str]) -> None:
    """`needs`: (what, path relative to working_dir), a file, a folder or a glob."""
    files = uploaded_files(working_dir, excludes)
    check_needed(working_dir, needs, excludes, files)
    check_size(working_dir, files)


# --- files the job needs ------------------------------------------------------------------


def check_needed(
    working_dir: Path, needs: list[tuple[str, str]], excludes: list[str], files: dict[str, int]
) -> None:
    for what, relative in needs:
        if not reaches(relative, files):
            raise PreflightError(
                f"{what} {relative} would not be uploaded with the job: "
                f"{left_out_by(working_dir, relative, excludes)}; or {ELSEWHERE}"
            )


def reaches(relative: str, files: dict[str, int]) -> bool:
    """Whether the upload holds the file, a file under the folder (its ignore files aside),
    or a match of the glob."""
    if glob.has_magic(relative):
        return any(fnmatch.fnmatchcase(f, relative) for f in files)
    folder = relative.rstrip("/") + "/"
    return relative in files or any(
        f.startswith(folder) and PurePosixPath(f).name not in IGNORE_FILES for f in files
    )


def left_out_by(working_dir: Path, relative: str, excludes: list[str]) -> str:
    """What leaves `relative` out, and what to do about it."""
    probe = local_example(working_dir, relative)
    chain = [working_dir.joinpath(*probe.parts[: i + 1]) for i in range(len(probe.parts))]
    for pattern in all_excludes(excludes):
        if any(_get_excludes(working_dir, [pattern])(p) for p in chain):
            return f"the exclude pattern {pattern!r} leaves it out (Kiln's, Ray's or --exclude)"
    for depth in range(len(probe.parts)):
        folder = working_dir.joinpath(*probe.parts[:depth])
        for name in IGNORE_FILES if gitignore_honoured() else IGNORE_FILES[1:]:
            match = _get_ignore_file(folder, name)
            if match and any(match(p) for p in chain[depth:]):
                ignore = (folder / name).relative_to(working_dir)
                if name == ".gitignore":
                    return (
                        f"{ignore} lists it, and Ray uploads nothing .gitignore lists "
                        f"(run with {GITIGNORE_ENV}=1 to upload it anyway)"
                    )
                return f"{ignore} lists it: take it out of there"
    return "Ray's packaging leaves it out"


def local_example(working_dir: Path, relative: str) -> PurePosixPath:
    """The path itself, or the first local file under the folder or matching the glob."""
    if glob.has_magic(relative):
        found = sorted(working_dir.glob(relative))
        return (
            PurePosixPath(found[0].relative_to(working_dir)) if found else PurePosixPath(relative)
        )
    path = working_dir / relative
    inside = (
        sorted(p for p in path.rglob("*") if p.is_file() and p.name not in IGNORE_FILES)
        if path.is_dir()
        else []
    )
    return PurePosixPath((inside[0] if inside else path).relative_to(working_dir).as_posix())


# --- the upload's size --------------------------------------------------------------------


def check_size(working_dir: Path, files: dict[str, int]) -> None:
    """Refuses an upload whose estimated zip is well over the Jobs API's cap; one near it is
    sent, and a refusal by the cluster is reported with `too_large`."""
    if sum(files.values()) <= MAX_UPLOAD_BYTES:
        return
    zipped = estimated_zip_bytes(working_dir, files)
    if zipped > REFUSE_ABOVE * MAX_UPLOAD_BYTES:
        raise PreflightError(too_large(working_dir, files, f"about {mib(zipped)} zipped"))


def too_large(working_dir: Path, files: dict[str, int], zipped: str) -> str:
    largest = sorted(files.items(), key=lambda item: -item[1])[:LISTED]
    listed = ", ".join(f"{f} {mib(size)}" for f, size in largest if size >= LISTED_FROM)
    what = f"largest {listed}" if listed else f"{len(files):,} files"
    return (
        f"kiln submit would upload {mib(sum(files.values()))} from {working_dir} ({zipped}), "
        f"over the {mib(MAX_UPLOAD_BYTES)} that Ray's Jobs API takes: {what}. "
        f"{ELSEWHERE[0].upper()}{ELSEWHERE[1:]}, and leave it out with .rayignore or --exclude"
    )


def estimated_zip_bytes(working_dir: Path, files: dict[str, int]) -> float:
    """Deflate (as Ray zips) run on slices spread through each large file and on small files
    whole while SMALL_FILES_READ lasts; small files past it zip as those read did. Each file
    adds its zip entry (an image folder's many small files)."""
    zipped = float(sum(ZIP_ENTRY_BYTES + 2 * len(name.encode()) for name in files))
    small_read, small_zipped, small_rest = 0, 0, 0
    for name, size in sorted(files.items(), key=lambda item: -item[1]):
        if size > SLICES * SLICE_BYTES:
            zipped += size * sliced_ratio(working_dir / name, size)
        elif small_read < SMALL_FILES_READ:
            small_read += size
            small_zipped += len(zlib.compress((working_dir / name).read_bytes(), ZIP_LEVEL))
        else:
            small_rest += size
    return zipped + small_zipped + small_rest * small_zipped / max(1, small_read)


def sliced_ratio(path: Path, size: int) -> float:
    with path.open("rb") as f:
        zipped = 0
        for i in range(SLICES):
            f.seek((size - SLICE_BYTES) * i // (SLICES - 1))
            zipped += len(zlib.compress(f.read(SLICE_BYTES), ZIP_LEVEL))
    return zipped / (SLICES * SLICE_BYTES)


def mib(size: float) -> str:
    return f"{size / 2**30:.1f} GiB" if size >= 2**30 else f"{size / 2**20:.0f} MiB"
