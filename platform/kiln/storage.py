"""Run storage and the model registry live on any pyarrow filesystem (a local path, s3://,
gs://). Both are checked before a run or a search starts: a misspelt or read-only bucket was
found by Ray Train after its cluster had started (`kiln tune` printed pyarrow's traceback), or
by the registry after hours of training."""

import uuid

import pyarrow.fs as pafs

from kiln.errors import StorageError
from kiln.settings import absolute, get_settings


def check_places(storage: str, registers: bool) -> None:
    """Run storage, and the registry when the run or search registers its result."""
    check_writable(storage, "run storage")
    if registers:
        check_writable(get_settings().registry_uri, "registry")


def check_writable(uri: str, what: str) -> None:
    """Writes and removes a small file under `uri`, creating it when it does not exist."""
    try:
        filesystem, root = pafs.FileSystem.from_uri(absolute(uri))
        filesystem.create_dir(root, recursive=True)
        probe = f"{root}/.write-check-{uuid.uuid4().hex}"
        with filesystem.open_output_stream(probe):
            pass
        filesystem.delete_file(probe)
    except (OSError, ValueError) as e:  # ArrowInvalid (a URI pyarrow cannot open) is a ValueError
        raise StorageError(f"cannot write to the {what} {uri}: {e}") from None
