"""`kiln k8s render | validate`: the KubeRay manifests in k8s/.

kiln k8s render                                   # serveConfigV2 patches from serving/*.yaml
kiln k8s validate --crds ../kuberay/ray-operator/config/crd/bases
"""

from pathlib import Path

import typer
from rich.markup import escape

from kiln.cli.output import commands, console, print_json
from kiln.errors import SpecError

app = commands("KubeRay manifests: render serveConfigV2, validate.")


@app.command()
def render(
    root: Path = typer.Option(Path("k8s"), help="where the manifests are"),
    check: bool = typer.Option(False, "--check", help="write nothing; exit 1 if a patch is stale"),
) -> None:
    """Write each RayService's serveConfigV2 from the serving file it names."""
    from kiln.k8s.render import render as render_patches

    stale = render_patches(root, project=Path.cwd(), check=check)
    for path in stale:
        console.print(f"{'stale' if check else 'wrote'} {path}")
    if check and stale:
        raise SpecError(
            f"{len(stale)} serveConfigV2 patch(es) differ from serving/: run kiln k8s render"
        )
    if not stale:
        console.print("every serveConfigV2 matches its serving file")


@app.command()
def validate(
    paths: list[Path] = typer.Argument(
        None, help="kustomize folders or YAML files (default: k8s/overlays/*)"
    ),
    crds: Path = typer.Option(
        None, help="folder of KubeRay CRD YAML (a release's, or `kubectl get crd ... -o yaml`)"
    ),
    kubernetes_version: str = typer.Option(
        "1.33", help="the Kubernetes schemas core kinds are checked against"
    ),
    json_output: bool = typer.Option(False, "--json", help="one JSON object on stdout"),
) -> None:
    """Build each overlay and check every resource: KubeRay kinds strictly against the CRDs,
    core kinds against Kubernetes' schemas, rayVersion and serveConfigV2 against Kiln."""
    from kiln.k8s.validate import Report, build, check_documents, load_crds

    targets = paths or sorted(p for p in Path("k8s/overlays").iterdir() if p.is_dir())
    validators = load_crds(crds) if crds else None
    total = Report()
    for target in targets:
        report = check_documents(build(target), validators, kubernetes_version, source=str(target))
        total.checked += report.checked
        total.skipped += report.skipped
        total.problems += report.problems
    if json_output:
        print_json(vars(total))
    else:
        for problem in total.problems:
            console.print(f"[red]✗[/red] {escape(problem)}")
        console.print(f"{len(total.checked)} resources checked, {len(total.problems)} problem(s)")
        if total.skipped:
            console.print(f"not checked (no schema given): {', '.join(total.skipped)}")
    if total.problems:
        raise typer.Exit(2)
