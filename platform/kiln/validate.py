"""A job spec checked against everything it names, before any Ray process starts: the
datasets and model families it names and their params, the files it reads, and every corner
of its search space. `kiln validate` and every command that runs a spec load it here.

    spec = load_spec("jobs/digits-cnn.yaml", overrides=["train.epochs=3"])
"""

import json
from collections.abc import Iterable
from pathlib import Path

from pydantic import ValidationError

from kiln.errors import SpecError
from kiln.spec import JobSpec, first_error, parse_spec, read_spec, set_path


def load_spec(path: str | Path, overrides: Iterable[str] = ()) -> JobSpec:
    """Read, merge, override, validate and check a job spec against the registries."""
    spec = read_spec(path, overrides)
    check_spec(spec, source=str(path))
    check_space(spec, source=str(path))
    return spec


def check_spec(spec: JobSpec, source: str) -> None:
    """What pydantic cannot know: registry names, builder params, data files."""
    from kiln import data, models  # they import torch and pandas: only once the YAML is sound

    checks = [
        ("data", lambda: data.check(spec.data)),
        ("model", lambda: models.check(spec.model)),
    ]
    for prefix, check in checks:
        try:
            check()
        except ValidationError as e:
            raise SpecError(first_error(e, source, prefix=f"{prefix}.params")) from None
        except SpecError as e:
            where = getattr(e, "field", None) or prefix
            raise SpecError(f"{source}: {where}: {e}") from None


def check_space(spec: JobSpec, source: str) -> None:
    """Every corner of every search dimension (both ends, every listed value, and a fraction
    drawn from a continuous range) must make a valid job spec, so a bad space fails before
    any trial runs."""
    if spec.tune is None:
        return
    base = spec.model_dump(mode="json", by_alias=True, exclude={"tune"})
    for path, domain in spec.tune.space.items():
        for value in domain.corners():
            raw = json.loads(json.dumps(base))
            where = f"{source}: tune.space.{path}={value!r} gives"
            if domain.kind in ("uniform", "loguniform") and not float(value).is_integer():
                where = f"{source}: tune.space.{path}: {domain.kind} draws fractions ({value:.4g})"
            set_path(raw, path, value, source=where)
            check_spec(parse_spec(raw, source=where), source=where)
