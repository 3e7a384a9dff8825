"""`kiln submit SPEC` and `kiln jobs list | status | logs | stop`: job specs run on a Ray
cluster through its Jobs API.

    kiln submit jobs/digits-cnn.yaml --address http://head:8265 --follow
    kiln jobs logs digits-cnn-20261125-101530-a3f9 --follow
"""

import sys
import time
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from kiln.cli.output import commands, console, err_console, print_json
from kiln.errors import SpecError

ADDRESS_HELP = (
    "the cluster's dashboard, http://HEAD:8265 (default: KILN_RAY_ADDRESS, RAY_ADDRESS, "
    "or the cluster kiln up started)"
)

app = commands("Jobs on a Ray cluster: list, status, logs, stop.")


def submit(
    spec_file: Path = typer.Argument(..., help="the job spec (YAML), inside this directory"),
    set_: list[str] = typer.Option([], "--set", help="override a field: PATH=VALUE"),
    tune: bool = typer.Option(False, "--tune", help="run `kiln tune` instead of `kiln train`"),
    address: str = typer.Option(None, help=ADDRESS_HELP),
    follow: bool = typer.Option(
        False, "--follow", "-f", help="stream the logs; exit with the job's status"
    ),
    shared_storage: bool = typer.Option(
        False, help="local registry/storage paths are on a filesystem every node mounts"
    ),
    autoscaling: bool = typer.Option(
        False, help="the cluster adds nodes on demand: skip the check that its resources exist now"
    ),
    env: list[str] = typer.Option(
        [], "--env", help="an environment variable for the job: KEY=VALUE"
    ),
    exclude: list[str] = typer.Option([], "--exclude", help="a path pattern not to upload"),
    json_output: bool = typer.Option(False, "--json", help="one JSON object on stdout"),
) -> None:
    """Run a job spec on a Ray cluster: this directory travels as the job's working_dir."""
    from kiln.cluster import preflight
    from kiln.cluster.address import resolve_address
    from kiln.cluster.dashboard import alive_nodes
    from kiln.cluster.jobs import Jobs
    from kiln.cluster.submission import build_submission, storage_uris
    from kiln.cluster.upload import check_upload
    from kiln.validate import load_spec

    spec = load_spec(spec_file, set_)
    if tune and spec.tune is None:
        raise SpecError(f"{spec_file}: --tune needs a `tune` section in the spec")
    job = build_submission(
        spec_file,
        spec,
        set_,
        "tune" if tune else "train",
        extra_env=dict(_pair(item) for item in env),
        extra_excludes=exclude,
    )
    check_upload(job.working_dir, job.needs, job.excludes)
    address = resolve_address(address)
    jobs = Jobs(address)
    nodes = alive_nodes(address)
    preflight.check_storage(storage_uris(spec, job.env_vars), nodes, shared_storage)
    if not autoscaling:
        preflight.check_resources(spec, nodes, address)
    submission_id = jobs.submit(job)
    if json_output and not follow:
        print_json(
            {"submission_id": submission_id, "address": address, "entrypoint": job.entrypoint}
        )
        return
    out = err_console if json_output else console
    out.print(f"submitted [bold]{submission_id}[/bold] to {address}: {job.entrypoint}")
    if not follow:
        out.print(
            f"follow: kiln jobs logs {submission_id} --follow; stop: kiln jobs stop {submission_id}"
        )
        return
    _follow(jobs, submission_id, json_output)


@app.command("list")
def list_jobs(
    address: str = typer.Option(None, help=ADDRESS_HELP),
    json_output: bool = typer.Option(False, "--json", help="one JSON array on stdout"),
) -> None:
    """The cluster's submitted jobs, newest first."""
    jobs = _jobs(address).list()
    if json_output:
        print_json(jobs)
        return
    rows = [("SUBMISSION ID", "STATUS", "JOB", "USER", "STARTED", "DURATION")]
    for job in jobs:
        meta = job.get("metadata") or {}
        job_name = meta.get("kiln_job", job["entrypoint"][:40])
        when = _when(job.get("start_time"))
        rows.append(
            (
                job["submission_id"],
                job["status"],
                job_name,
                meta.get("user", ""),
                when,
                _duration(job),
            )
        )
    # Plain aligned columns, as kubectl prints them: ids are long and must never be cut.
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


@app.command()
def status(
    submission_id: str = typer.Argument(...),
    address: str = typer.Option(None, help=ADDRESS_HELP),
    json_output: bool = typer.Option(False, "--json", help="one JSON object on stdout"),
) -> None:
    """A job's status; the exit code says it too (0 succeeded, 1 failed, 5 stopped, 6 not
    finished, 3 no such job)."""
    from kiln.cluster.jobs import exit_code

    job = _jobs(address).info(submission_id)
    if json_output:
        print_json(job)
    else:
        message = escape(job.get("message") or "")
        console.print(f"{submission_id}: [bold]{job['status']}[/bold] {message}")
    raise typer.Exit(exit_code(job["status"]))


@app.command()
def logs(
    submission_id: str = typer.Argument(...),
    address: str = typer.Option(None, help=ADDRESS_HELP),
    follow: bool = typer.Option(
        False, "--follow", "-f", help="until the job ends; exit with its status"
    ),
) -> None:
    """A job's output (its driver's stdout and stderr)."""
    jobs = _jobs(address)
    if follow:
        _follow(jobs, submission_id, json_output=False)
    sys.stdout.write(jobs.logs(submission_id))


@app.command()
def stop(
    submission_id: str = typer.Argument(...),
    address: str = typer.Option(None, help=ADDRESS_HELP),
    json_output: bool = typer.Option(False, "--json", help="one JSON object on stdout"),
) -> None:
    """Stop a job (Ray sends its driver SIGTERM, then SIGKILL) and wait until it has."""
    final = _jobs(address).stop(submission_id)
    if json_output:
        print_json({"submission_id": submission_id, "status": final})
    else:
        console.print(f"{submission_id}: [bold]{final}[/bold]")


def _follow(jobs: Any, submission_id: str, json_output: bool) -> None:
    from kiln.cluster.jobs import exit_code

    stream = sys.stderr if json_output else sys.stdout

    def write(lines: str) -> None:
        stream.write(lines)
        stream.flush()

    try:
        final = jobs.follow(submission_id, write)
    except KeyboardInterrupt:
        err_console.print(
            f"stopped following; {submission_id} still runs: "
            f"kiln jobs logs {submission_id} --follow | kiln jobs stop {submission_id}"
        )
        raise typer.Exit(130) from None
    if json_output:
        print_json({"submission_id": submission_id, "address": jobs.address, "status": final})
    else:
        err_console.print(f"{submission_id}: [bold]{final}[/bold]")
    raise typer.Exit(exit_code(final))


def _jobs(address: str | None) -> Any:
    from kiln.cluster.address import resolve_address
    from kiln.cluster.jobs import Jobs

    return Jobs(resolve_address(address))


def _pair(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise SpecError(f"--env {item!r}: expected KEY=VALUE")
    return key, value


def _when(ms: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ms / 1000)) if ms else ""


def _duration(job: dict[str, Any]) -> str:
    start, end = job.get("start_time"), job.get("end_time")
    if not start:
        return ""
    seconds = ((end or time.time() * 1000) - start) / 1000
    return f"{seconds:.0f}s"
