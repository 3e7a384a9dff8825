"""What `kiln submit` sends through Ray's Jobs API: the project directory as the job's
`working_dir`, an entrypoint that runs `kiln train` (or `kiln tune`) on the cluster, Kiln's
settings as `env_vars`, a readable `submission_id` and who/what/which-commit `metadata`.

    job = build_submission(Path("jobs/digits-cnn.yaml"), spec, overrides=[], command="train")
    client.submit_job(**job.to_ray())
"""

import getpass
import os
import secrets
import shlex
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kiln.errors import PreflightError
from kiln.settings import absolute, get_settings
from kiln.spec import JobSpec, spec_files

Command = Literal["train", "tune"]

# Never uploaded: environments, Kiln's local state, caches and VCS data (Ray also skips what
# .gitignore lists). The Jobs API caps a working_dir at 100 MiB.
EXCLUDES = [
    ".git",
    ".venv",
    "venv",
    ".kiln",
    "__pycache__",
    "*.pyc",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    ".ipynb_checkpoints",
    "*.egg-info",
    ".cache",
    "bench-results",
]

# The cluster connects to itself (the Jobs API sets RAY_ADDRESS for the entrypoint) and keeps
# its own KILN_HOME (a client's local paths mean nothing there); serving secrets stay here, and
# so does what describes the one-machine cluster this side started (connect.LOCAL_CLUSTER_ENV).
NOT_CARRIED = {
    "KILN_RAY_ADDRESS",
    "KILN_HOME",
    "KILN_API_KEYS",
    "KILN_API_KEYS_FILE",
    "KILN_REDIS_URL",
    "KILN_TRAIN_ENV_INHERITED",
}


@dataclass
class Submission:
    submission_id: str
    entrypoint: str
    working_dir: Path
    env_vars: dict[str, str]
    metadata: dict[str, str]
    excludes: list[str] = field(default_factory=lambda: list(EXCLUDES))
    needs: list[tuple[str, str]] = field(default_factory=list)  # (what, path in working_dir)

    def to_ray(self) -> dict[str, Any]:
        """Keyword arguments of `JobSubmissionClient.submit_job`."""
        runtime_env = {
            "working_dir": str(self.working_dir),
            "excludes": self.excludes,
            "env_vars": self.env_vars,
        }
        return {
            "entrypoint": self.entrypoint,
            "submission_id": self.submission_id,
            "runtime_env": runtime_env,
            "metadata": self.metadata,
        }


def build_submission(
    spec_file: Path,
    spec: JobSpec,
    overrides: list[str],
    command: Command,
    working_dir: Path | None = None,
    extra_env: dict[str, str] | None = None,
    extra_excludes: list[str] | None = None,
) -> Submission:
    working_dir = (working_dir or Path.cwd()).resolve()
    spec_path = inside(working_dir, spec_file, "the job spec")
    needs = [("the job spec", spec_path)]
    for extended in spec_files(spec_file)[1:]:
        needs.append(("a file it extends", inside(working_dir, extended, "a file it extends")))
    for name, path in (("data.path", spec.data.path), ("data.val_path", spec.data.val_path)):
        if path and "://" not in path:
            needs.append((name, inside(working_dir, Path(path), name)))
    submission_id = new_submission_id(spec.name)
    return Submission(
        submission_id=submission_id,
        entrypoint=entrypoint(command, spec_path, overrides, submission_id),
        working_dir=working_dir,
        env_vars={**kiln_env(), **(extra_env or {})},
        metadata=metadata(spec, spec_path, command, overrides, working_dir),
        excludes=EXCLUDES + (extra_excludes or []),
        needs=needs,
    )


def inside(working_dir: Path, path: Path, what: str) -> str:
    """`path` relative to the working directory: what is outside it would not reach the cluster."""
    try:
        return Path(path).resolve().relative_to(working_dir).as_posix()
    except ValueError:
        raise PreflightError(
            f"{what} {path} lies outside {working_dir}, the directory sent to the cluster: "
            "run kiln submit from a directory that holds it, or give a URI (s3://...)"
        ) from None


def new_submission_id(job: str) -> str:
    """Readable and unique: the job's name, when, and 4 random hex digits."""
    return f"{job}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def entrypoint(command: Command, spec_path: str, overrides: list[str], submission_id: str) -> str:
    """`python` is the cluster's (its image or the environment that ran `ray start`). The run is
    named after the submission, so the registry's lineage points back at the job, and a job
    resubmitted under the same id resumes from its last checkpoint."""
    args = ["python", "-m", "kiln", command, spec_path]
    for item in overrides:
        args += ["--set", item]
    args += ["--run-name" if command == "train" else "--name", submission_id]
    return shlex.join(args)


def kiln_env() -> dict[str, str]:
    """Kiln's settings from this environment, with the registry and run storage made explicit
    (absolute paths or URIs) so that the job writes where this side will read."""
    env = {k: v for k, v in os.environ.items() if k.startswith("KILN_") and k not in NOT_CARRIED}
    settings = get_settings()
    env["KILN_REGISTRY"] = settings.registry_uri
    env["KILN_STORAGE"] = settings.storage_uri
    env["PYTHONUNBUFFERED"] = "1"  # progress lines reach `kiln jobs logs` as they are printed
    return env


def storage_uris(spec: JobSpec, env: dict[str, str]) -> dict[str, str]:
    """Where the job will write: its checkpoints and runs, and the model registry."""
    return {
        "storage_path": absolute(spec.storage_path) if spec.storage_path else env["KILN_STORAGE"],
        "registry": env["KILN_REGISTRY"],
    }


def metadata(
    spec: JobSpec, spec_path: str, command: Command, overrides: list[str], working_dir: Path
) -> dict[str, str]:
    from kiln import __version__

    return {
        "kiln_job": spec.name,
        "kiln_command": command,
        "spec": spec_path,
        "overrides": " ".join(overrides),
        "user": getpass.getuser(),
        "git_commit": git_commit(working_dir),
        "kiln_version": __version__,
    }


def git_commit(directory: Path) -> str:
    """HEAD's commit, '+dirty' when files differ from it; '' outside a git repository."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(directory), *args], capture_output=True, text=True, timeout=10
        )
        return done.stdout.strip() if done.returncode == 0 else ""

    try:
        commit = git("rev-parse", "HEAD")
        dirty = commit and git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return f"{commit}+dirty" if dirty else commit
