"""The model registry: trained models as versioned, checksummed folders, and their way back.

    store     ModelRegistry: versions, aliases and files on a local path, s3:// or gs://
    card      model.json: what a version is (task, model, schema, inputs and outputs)
    loading   a version built back into an nn.Module, weights checked against the manifest
    export    a loaded version as ONNX or TorchScript

Only the store is imported here: listing and promoting need neither torch nor the models.
"""

from kiln.registry.store import MANIFEST, REFERENCE, WEIGHTS, ModelRegistry, ModelVersion

__all__ = ["MANIFEST", "REFERENCE", "WEIGHTS", "ModelRegistry", "ModelVersion"]
