"""Job specs: the YAML a user writes, as typed pydantic models, and how it is read.

    spec = read_spec("jobs/digits-cnn.yaml", overrides=["train.epochs=3"])

A spec may `extends: base.yaml` (deep-merged, the child wins) and take `--set a.b=value`
overrides (values parsed as YAML). Every mistake becomes one `SpecError` line naming the file
and the YAML path of the bad field. What a spec names (datasets, model families, files) is
checked one layer up, by `kiln.validate.load_spec`, which every command uses.
"""

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from kiln import tasks
from kiln.errors import SpecError
from kiln.tasks import Mode

TASK_NAMES: list[Any] = tasks.names()  # for the JSON Schema (kiln schema job)
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class DataSpec(Strict):
    name: str = Field(description="a registered dataset (`kiln.data`), e.g. digits")
    path: str | None = Field(
        None, description="your file (CSV/Parquet, local or s3://), for datasets that read one"
    )
    params: dict[str, Any] = Field(default_factory=dict, description="the dataset's parameters")
    val_path: str | None = Field(
        None,
        description="your own validation files, for datasets that read files and split them "
        "(table, text_csv, image_folder): every row of data.path trains, every row here "
        "validates, and val_fraction is not used",
    )
    val_fraction: float = Field(0.2, gt=0, lt=1)
    seed: int = Field(0, description="seed of the train/validation split")
    streaming: bool | Literal["auto"] = Field(
        "auto",
        description="stream the files to the workers through Ray Data (true), load them in "
        "memory (false), or stream only files over 256 MiB (auto); for datasets that stream",
    )


class ModelSpec(Strict):
    family: str | None = Field(None, description="a registered model family, e.g. cnn")
    import_path: str | None = Field(
        None,
        alias="import",
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
        description="your own builder, 'package.module:function'",
    )
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_source(self) -> "ModelSpec":
        if (self.family is None) == (self.import_path is None):
            raise ValueError("give exactly one of 'family' or 'import'")
        return self


class OptimizerSpec(Strict):
    name: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: PositiveFloat = 1e-3
    weight_decay: NonNegativeFloat = 0.0
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd only")
    betas: tuple[float, float] = Field(
        (0.9, 0.999), description="adam and adamw; GANs use [0.5, 0.999]"
    )
    sparse_embeddings: bool | Literal["auto"] = Field(
        "auto",
        description="embedding tables updated only in the rows a batch used (SparseAdam, no "
        "weight decay on them); auto: tables of 100,000 rows or more, on CPUs; adam and adamw",
    )

    @model_validator(mode="after")
    def _betas_in_range(self) -> "OptimizerSpec":
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError("betas: each must be in [0, 1)")
        if self.sparse_embeddings is True and self.name == "sgd":
            raise ValueError("sparse_embeddings: true needs adam or adamw (SparseAdam)")
        return self


class ScheduleSpec(Strict):
    name: Literal["constant", "cosine", "step"] = "cosine"
    warmup_epochs: int = Field(0, ge=0)
    step_size: PositiveInt = Field(10, description="step only: epochs between decays")
    gamma: float = Field(0.1, gt=0, le=1, description="step only: decay factor")


class EarlyStoppingSpec(Strict):
    metric: str | None = Field(None, description="defaults to checkpoint.metric")
    mode: Mode | None = None
    patience: PositiveInt = 3
    min_delta: NonNegativeFloat = 0.0


class TrainSpec(Strict):
    epochs: PositiveInt = 10
    batch_size: PositiveInt = 64
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    early_stopping: EarlyStoppingSpec | None = None
    grad_clip: PositiveFloat | None = Field(1.0, description="max gradient norm; null disables")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 autocast on GPUs that support it, fp32 on CPU"
    )
    seed: int = 0


class ScalingSpec(Strict):
    num_workers: PositiveInt | tuple[PositiveInt, PositiveInt] = Field(
        1, description="a count, or [min, max] for elastic training"
    )
    use_gpu: bool = False
    resources_per_worker: dict[str, NonNegativeFloat] | None = None
    start_timeout_s: PositiveFloat | None = Field(
        600,
        description="fail when the workers' resources are not free within this time (checked "
        "each minute); null waits forever, e.g. on a cluster that adds nodes on demand",
    )

    @model_validator(mode="after")
    def _elastic_range(self) -> "ScalingSpec":
        if isinstance(self.num_workers, tuple) and self.num_workers[0] > self.num_workers[1]:
            raise ValueError("num_workers: [min, max] needs min <= max")
        return self


class CheckpointSpec(Strict):
    metric: str | None = Field(None, description="defaults to the task's main metric")
    mode: Mode | None = None
    keep: PositiveInt = Field(2, description="how many best checkpoints to keep")


class FailureSpec(Strict):
    max_failures: int = Field(2, ge=-1, description="worker-group restarts; -1 = unlimited")


class RegisterSpec(Strict):
    name: str | None = Field(None, pattern=NAME_PATTERN, description="defaults to the job name")
    alias: str | None = Field("staging", pattern=NAME_PATTERN)


class Domain(Strict):
    """One search dimension: exactly one of the keys, e.g. {loguniform: [1e-4, 1e-1]}."""

    uniform: tuple[float, float] | None = None
    loguniform: tuple[PositiveFloat, PositiveFloat] | None = None
    randint: tuple[int, int] | None = Field(None, description="[low, high], both included")
    choice: list[Any] | None = Field(None, min_length=1)
    grid: list[Any] | None = Field(
        None, min_length=1, description="every value, in every combination"
    )

    @model_validator(mode="after")
    def _one_kind(self) -> "Domain":
        given = [k for k in type(self).model_fields if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of uniform, loguniform, randint, choice, grid")
        bounds = getattr(self, given[0])
        if given[0] in ("uniform", "loguniform", "randint") and bounds[0] > bounds[1]:
            raise ValueError(f"{given[0]}: low {bounds[0]} > high {bounds[1]}")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in type(self).model_fields if getattr(self, k) is not None)

    @property
    def samples(self) -> bool:
        """Drawn at random (every kind but grid, which is enumerated)."""
        return self.kind != "grid"

    def corners(self) -> list[Any]:
        """Values that stand for the whole domain when checking it against the job spec: every
        listed value, both ends of a range, and for a continuous range a fractional value
        inside it (what it draws: an integer field refuses it)."""
        values = list(getattr(self, self.kind))
        if self.kind in ("uniform", "loguniform") and values[0] < values[1]:
            inside = values[0] + (values[1] - values[0]) * 0.3819660112501051  # 1 - 1/phi
            values.append(inside if not float(inside).is_integer() else inside + 0.5)
        return values


class SchedulerSpec(Strict):
    name: Literal["fifo", "asha", "pbt", "pb2"] = "asha"
    grace_period: PositiveInt = Field(2, description="asha: epochs every trial runs")
    reduction_factor: float = Field(2.0, gt=1, description="asha: keep 1/reduction_factor per rung")
    perturbation_interval: PositiveInt = Field(
        2, description="pbt, pb2: epochs between a trial's chances to exploit a better one"
    )
    quantile_fraction: float = Field(
        0.25, gt=0, le=0.5, description="pbt, pb2: the bottom fraction copies the top fraction"
    )
    resample_probability: float = Field(
        0.25, ge=0, le=1, description="pbt: chance to draw a value anew rather than perturb it"
    )
    synchronous: bool = Field(
        False,
        description="pbt, pb2: each trial waits at a perturbation point until every trial of "
        "the population reaches it, and all are ranked at the same epoch (Ray's synch)",
    )

    @property
    def population_based(self) -> bool:
        """Trials that continue from each other's checkpoints (kiln.tune.population)."""
        return self.name in ("pbt", "pb2")


class TuneSpec(Strict):
    metric: str | None = Field(None, description="defaults to checkpoint.metric")
    mode: Mode | None = None
    num_samples: PositiveInt = Field(8, description="trials (per grid point, with grid)")
    max_concurrent_trials: PositiveInt = 2
    time_budget_s: PositiveFloat | None = None
    search: Literal["random", "grid", "optuna"] = "random"
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    seed: int = 0
    space: dict[str, Domain] = Field(
        min_length=1, description="spec paths, e.g. train.optimizer.lr"
    )

    @model_validator(mode="after")
    def _searcher_takes_its_domains(self) -> "TuneSpec":
        """Each searcher's domains, as Ray runs them: Optuna samples (no grid); a grid search
        enumerates its grid domains, each point `num_samples` times (1 unless given), and may
        draw the sampled ones at each; random draws, crossing any grid domains."""
        kinds = {path: d.kind for path, d in self.space.items()}
        grids = [p for p, k in kinds.items() if k == "grid"]
        if self.search == "optuna" and grids:
            raise ValueError(
                f"search: optuna samples each trial's values and cannot enumerate a grid "
                f"({grids[0]}: grid); use search: grid, or a choice domain"
            )
        scheduler = self.scheduler.name
        if self.scheduler.population_based and self.search == "optuna":
            raise ValueError(
                f"scheduler: {scheduler} chooses each trial's next values itself; Ray runs it "
                "with search: random or grid, not optuna"
            )
        mutable = [p for p, d in self.space.items() if d.samples and p.startswith("train.")]
        if scheduler == "pb2":  # a Gaussian process over numeric bounds
            mutable = [p for p in mutable if self.space[p].kind != "choice"]
        if self.scheduler.population_based and not mutable:
            what = "a uniform, loguniform or randint" if scheduler == "pb2" else "a sampled"
            raise ValueError(
                f"scheduler: {scheduler} needs {what} train.* domain to mutate (model and data "
                "values travel with the weights: a new size would not fit them)"
            )
        if self.search == "grid" and not grids:
            raise ValueError("search: grid needs at least one grid domain (e.g. {grid: [1, 2]})")
        if self.search == "grid" and "num_samples" not in self.model_fields_set:
            self.num_samples = 1  # each combination once
        return self


class JobSpec(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    task: str = Field(json_schema_extra={"enum": TASK_NAMES}, description="what is learned")
    description: str = ""
    data: DataSpec
    model: ModelSpec
    train: TrainSpec = Field(default_factory=TrainSpec)
    scaling: ScalingSpec = Field(default_factory=ScalingSpec)
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    failure: FailureSpec = Field(default_factory=FailureSpec)
    registration: RegisterSpec | None = Field(default_factory=RegisterSpec, alias="register")
    storage_path: str | None = Field(
        None, description="where Ray Train keeps runs and checkpoints; default KILN_HOME/runs"
    )
    tune: TuneSpec | None = Field(None, description="hyperparameter search (kiln tune)")

    @field_validator("task")
    @classmethod
    def _known_task(cls, name: str) -> str:
        if name not in tasks.TASKS:
            known = [repr(n) for n in tasks.names()]
            raise ValueError(
                f"Input should be {', '.join(known[:-1])} or {known[-1]} (got {name!r})"
            )
        return name

    @model_validator(mode="after")
    def _metrics_of_task(self) -> "JobSpec":
        task = tasks.get(self.task)
        metric, mode = task.objective
        self.checkpoint.metric = self.checkpoint.metric or metric
        self.checkpoint.mode = self.checkpoint.mode or mode
        stop = self.train.early_stopping
        if stop is not None:
            stop.metric = stop.metric or self.checkpoint.metric
            stop.mode = stop.mode or self.checkpoint.mode
        if self.tune is not None:
            self.tune.metric = self.tune.metric or self.checkpoint.metric
            self.tune.mode = self.tune.mode or self.checkpoint.mode
        for where, name in [
            ("checkpoint", self.checkpoint.metric),
            ("early_stopping", stop and stop.metric),
            ("tune", self.tune and self.tune.metric),
        ]:
            if name is not None and name not in task.metrics:
                known = ", ".join(task.metrics)
                raise ValueError(f"{where}.metric {name!r} is not a {self.task} metric ({known})")
        return self

    @property
    def model_name(self) -> str:
        return (self.registration and self.registration.name) or self.name

    def digest(self) -> str:
        """sha256 of the resolved spec: two runs of equal specs share it."""
        text = json.dumps(self.model_dump(mode="json", by_alias=True), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


# --- reading ---------------------------------------------------------------------------------


def read_spec(path: str | Path, overrides: Iterable[str] = ()) -> JobSpec:
    """Read, merge, override and validate a job spec (the schema only)."""
    path = Path(path)
    raw = _read_with_extends(path, chain=())
    for item in overrides:
        _apply_override(raw, item, path)
    return parse_spec(raw, source=str(path))


def parse_spec(raw: Any, source: str) -> JobSpec:
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: a job spec is a YAML mapping, got {type(raw).__name__}")
    try:
        return JobSpec.model_validate(raw)
    except ValidationError as e:
        raise SpecError(first_error(e, source, JobSpec)) from None


def apply_overrides(spec: JobSpec, values: dict[str, Any]) -> JobSpec:
    """A copy of `spec` with `values` set at their dotted paths (a trial's configuration)."""
    raw = spec.model_dump(mode="json", by_alias=True)
    for path, value in values.items():
        set_path(raw, path, value, source=spec.name)
    return JobSpec.model_validate(raw)


def spec_to_yaml(spec: JobSpec) -> str:
    return yaml.safe_dump(spec.model_dump(mode="json", by_alias=True), sort_keys=False)


def read_yaml(path: Path, source: str) -> Any:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError(f"{source}: file not found: {path}") from None
    except OSError as e:
        raise SpecError(f"{source}: cannot read {path}: {e.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or "not valid YAML"
        raise SpecError(f"{path}: {where}{problem}") from None


def spec_files(path: str | Path) -> list[Path]:
    """The spec file and the files it extends, nearest first (a loaded spec has no cycle)."""
    files = [Path(path).resolve()]
    while isinstance(raw := read_yaml(files[-1], str(path)), dict) and raw.get("extends"):
        files.append((files[-1].parent / str(raw["extends"])).resolve())
    return files


def _read_with_extends(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    source = f"{chain[-1]}: extends" if chain else str(path)
    raw = read_yaml(path, source)
    if not isinstance(raw, dict):
        return raw
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    if not isinstance(parent, str):
        raise SpecError(f"{path}: extends: expected a file name, got {parent!r}")
    parent_path = (path.parent / parent).resolve()
    if parent_path in chain or parent_path == path.resolve():
        raise SpecError(f"{path}: extends: {parent} extends itself (a cycle)")
    base = _read_with_extends(parent_path, (*chain, path.resolve()))
    if not isinstance(base, dict):
        raise SpecError(f"{path}: extends: {parent} is not a YAML mapping")
    return deep_merge(base, raw)


# A model or data section that names another family or dataset than its base replaces the
# base's section instead of merging into it: cnn params make no sense to an mlp.
KIND_OF_SECTION = {"model": ("family", "import"), "data": ("name",)}


def deep_merge(base: dict[str, Any], top: dict[str, Any], level: int = 0) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        old = merged.get(key)
        if (
            isinstance(value, dict)
            and isinstance(old, dict)
            and not (level == 0 and _kind_changes(key, old, value))
        ):
            merged[key] = deep_merge(old, value, level + 1)
        else:
            merged[key] = value
    return merged


def _kind_changes(section: str, base: dict[str, Any], top: dict[str, Any]) -> bool:
    keys = KIND_OF_SECTION.get(section, ())
    return any(k in top for k in keys) and any(base.get(k) != top.get(k) for k in keys)


def _apply_override(raw: dict[str, Any], item: str, source: Path) -> None:
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise SpecError(f"{source}: --set {item!r}: expected PATH=VALUE, e.g. train.epochs=3")
    set_path(raw, key.strip(), yaml.safe_load(text) if text else None, source=str(source))


def set_path(raw: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    node = raw
    parts = dotted.split(".")
    for i, part in enumerate(parts[:-1]):
        if node.get(part) is None:  # absent, or `register: null`: the section starts here
            node[part] = {}
        child = node[part]
        if not isinstance(child, dict):
            where = ".".join(parts[: i + 1])
            raise SpecError(f"{source}: {dotted}: {where} is a value, not a section")
        node = child
    node[parts[-1]] = value


def first_error(
    e: ValidationError,
    source: str,
    model: type[BaseModel] | None = None,
    prefix: str = "",
) -> str:
    """One line for the first error: file, YAML path, what is expected (and how many more)."""
    errors = e.errors()
    err = errors[0]
    loc = [str(p) for p in err["loc"] if not str(p).startswith(("function-after", "tuple["))]
    where = ".".join([prefix, *loc] if prefix else loc) or "(top level)"
    message = err["msg"]
    if err["type"] == "extra_forbidden":
        known = _fields_at(model, loc[:-1]) if model else []
        message = "unknown key" + (f"; expected one of: {', '.join(known)}" if known else "")
    elif err["type"] == "missing":
        message = "required field is missing"
    elif err["type"] == "value_error":
        message = message.removeprefix("Value error, ")
    else:
        message += f" (got {err['input']!r})"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{source}: {where}: {message}{more}"


def _fields_at(model: type[BaseModel], loc: list[str]) -> list[str]:
    for part in loc:
        field = model.model_fields.get(part)
        inner = _model_of(field.annotation) if field else None
        if inner is None:
            return []
        model = inner
    return sorted(f.alias or name for name, f in model.model_fields.items())


def _model_of(annotation: Any) -> type[BaseModel] | None:
    candidates = [annotation, *getattr(annotation, "__args__", ())]
    for c in candidates:
        if isinstance(c, type) and issubclass(c, BaseModel):
            return c
    return None
