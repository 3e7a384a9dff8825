"""The write check on run storage and the registry (pure logic, real files)."""

import pytest

from kiln.errors import StorageError
from kiln.storage import check_writable


def test_a_writable_place_is_created_and_left_as_it_was(tmp_path):
    check_writable(str(tmp_path / "runs"), "run storage")
    assert (tmp_path / "runs").is_dir() and list((tmp_path / "runs").iterdir()) == []


@pytest.mark.parametrize(
    "place, message",
    [
        ("{tmp}/a-file/runs", "cannot write to the run storage {tmp}/a-file/runs: "),
        ("nosuchfs://bucket/runs", "cannot write to the run storage nosuchfs://bucket/runs: "),
    ],
)
def test_a_place_that_cannot_be_written_is_one_line(tmp_path, place, message):
    (tmp_path / "a-file").write_text("")
    with pytest.raises(StorageError) as refused:
        check_writable(place.format(tmp=tmp_path), "run storage")
    assert str(refused.value).startswith(message.format(tmp=tmp_path))
    assert "\n" not in str(refused.value)
