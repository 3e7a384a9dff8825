"""Kiln's one error tree. Every error a user can cause is a `KilnError` with a one-line message;
the CLI prints it (no traceback) and exits with its `exit_code`.

    KilnError
    ├── SpecError            a job spec is wrong (file, YAML path, what is expected); exit 2
    ├── UnknownNameError     a model family or dataset name that is not registered; exit 2
    ├── DataError            a data source cannot be read or has the wrong shape; exit 2
    ├── RegistryError        the model registry refuses a read or write
    │   ├── ModelNotFoundError   no such model, version or alias
    │   └── IntegrityError       a file is missing, truncated or fails its sha256
    ├── TrainingError        a training run failed after its retries
    ├── RequestError         a request to a served model is malformed; HTTP 400
    ├── FeatureStoreError    Redis (the feature cache) cannot be started or reached
    ├── ServeError           a serving config cannot be deployed
    ├── ClusterError         a Ray cluster cannot be reached, or refuses a request
    │   ├── JobNotFoundError     no job with that submission id; exit 3
    │   └── PreflightError       a job would fail on the cluster (resources, storage); exit 2
    └── Interrupted          the user stopped it (Ctrl-C) with its state kept; exit 130
"""


class KilnError(Exception):
    exit_code = 1


class SpecError(KilnError):
    """`field` is the YAML path of the bad value, when the raiser knows it."""

    exit_code = 2

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class UnknownNameError(SpecError):
    def __init__(self, kind: str, name: str, known: list[str]):
        super().__init__(f"unknown {kind} {name!r}; known: {', '.join(sorted(known)) or 'none'}")


class DataError(SpecError):
    pass


class RegistryError(KilnError):
    pass


class StorageError(KilnError):
    """Run storage or the registry cannot be written."""


class ModelNotFoundError(RegistryError):
    exit_code = 3


class IntegrityError(RegistryError):
    exit_code = 4


class TrainingError(KilnError):
    pass


class RequestError(KilnError):
    """Raised while serving; the route edge turns it into a 400 with this message."""


class UnknownArmError(RequestError):
    """Feedback for an arm the endpoint's rollout does not have: 404, as an unknown version."""


class ServeError(KilnError):
    pass


class FeatureStoreError(KilnError):
    pass


class ClusterError(KilnError):
    pass


class JobNotFoundError(ClusterError):
    exit_code = 3


class PreflightError(ClusterError):
    exit_code = 2


class Interrupted(KilnError):
    exit_code = 130  # a shell's code for a command ended by SIGINT
