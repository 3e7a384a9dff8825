"""What `kiln submit` uploads, checked before Ray zips it (pure logic, real files)."""

import os
import zipfile
from pathlib import Path

import pytest

from kiln.cluster import upload
from kiln.cluster.submission import EXCLUDES
from kiln.cluster.upload import check_upload, estimated_zip_bytes, uploaded_files
from kiln.errors import PreflightError

JOB = [("the job spec", "job.yaml")]


def project(tmp_path: Path, files: dict[str, bytes | str]) -> Path:
    for name, content in {"job.yaml": "name: x\n", **files}.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return tmp_path


def test_uploaded_files_are_what_ray_packages(tmp_path):
    root = project(
        tmp_path,
        {
            "data/a.csv": "x\n1\n",
            "notes/b.txt": "b",
            ".gitignore": "notes/\n",
            ".git/config": "",
            ".kiln/registry/m.json": "{}",
            "src/.rayignore": "*.tmp\n",
            "src/nets.py": "",
            "src/scratch.tmp": "",
        },
    )
    assert set(uploaded_files(root, EXCLUDES)) == {
        "job.yaml",
        "data/a.csv",
        ".gitignore",
        "src/.rayignore",
        "src/nets.py",
    }


def test_data_that_gitignore_lists_is_refused_naming_it_and_the_way_out(tmp_path, monkeypatch):
    root = project(tmp_path, {"data/train.csv": "x\n1\n", ".gitignore": "data/\n"})
    needs = [*JOB, ("data.path", "data/train.csv")]
    with pytest.raises(PreflightError) as refused:
        check_upload(root, needs, EXCLUDES)
    message = str(refused.value)
    assert message.startswith("data.path data/train.csv would not be uploaded with the job")
    assert ".gitignore lists it" in message and "RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1" in message
    assert "s3://" in message
    monkeypatch.setenv("RAY_RUNTIME_ENV_IGNORE_GITIGNORE", "1")  # Ray then uploads it
    check_upload(root, needs, EXCLUDES)


@pytest.mark.parametrize(
    "files, path, reason",
    [
        ({"shards/p0.csv": "x", "shards/.rayignore": "*.csv\n"}, "shards", "shards/.rayignore"),
        ({"cache/v.csv": "x"}, "cache/v.csv", "the exclude pattern 'cache/'"),
        ({"parts/p0.csv": "x", "parts/p1.csv": "x"}, "parts/*.csv", "'parts/*.csv'"),
    ],
    ids=["a folder's .rayignore", "an --exclude", "a glob"],
)
def test_each_way_a_needed_path_is_left_out_is_named(tmp_path, files, path, reason):
    root = project(tmp_path, files)
    with pytest.raises(PreflightError) as refused:
        check_upload(root, [*JOB, ("data.val_path", path)], [*EXCLUDES, "cache/", "parts/*.csv"])
    assert str(refused.value).startswith(f"data.val_path {path} would not be uploaded")
    assert reason in str(refused.value)


def test_a_folder_or_glob_with_files_in_the_upload_passes(tmp_path):
    root = project(tmp_path, {"shards/p0.csv": "x", "shards/p1.tmp": "y", ".rayignore": "*.tmp"})
    check_upload(root, [*JOB, ("data.path", "shards"), ("data.val_path", "shards/*.csv")], [])


def test_an_upload_that_cannot_fit_the_jobs_api_is_refused_before_zipping(tmp_path, monkeypatch):
    monkeypatch.setattr(upload, "MAX_UPLOAD_BYTES", 2**20)  # the real cap is 100 MiB
    root = project(tmp_path, {"data/noise.bin": os.urandom(3 * 2**20)})
    with pytest.raises(PreflightError) as refused:
        check_upload(root, JOB, EXCLUDES)
    message = str(refused.value)
    assert "would upload 3 MiB" in message and "about 3 MiB zipped" in message
    assert "largest data/noise.bin 3 MiB" in message and "--exclude" in message
    # as large, but it zips to almost nothing: sent
    (root / "data/noise.bin").write_bytes(bytes(3 * 2**20))
    check_upload(root, JOB, EXCLUDES)


def test_the_zip_estimate_is_close_to_the_zip(tmp_path, monkeypatch):
    """Large files sampled in slices, small ones read whole up to a budget, the rest
    extrapolated: within 10% of the zip Ray would make, for a mix of kinds."""
    words = " ".join(f"token{i % 977}" for i in range(200_000)).encode()
    files = {
        "data/text.txt": words * 3,  # compresses well
        "data/noise.bin": os.urandom(2 * 2**20),  # not at all
        **{f"small/{i}.json": f'{{"id": {i}, "v": [{i}, {i * 2}]}}' * 50 for i in range(3000)},
    }
    root = project(tmp_path, files)
    monkeypatch.setattr(upload, "SMALL_FILES_READ", 2**20 // 4)  # most small ones extrapolated
    estimate = estimated_zip_bytes(root, uploaded_files(root, []))
    with zipfile.ZipFile(tmp_path / "out.zip", "w", zipfile.ZIP_DEFLATED) as z:
        for name in files:
            z.write(root / name, name)
    assert estimate == pytest.approx((tmp_path / "out.zip").stat().st_size, rel=0.1)
