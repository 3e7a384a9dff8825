"""Kiln: train, tune and serve deep-learning models on Ray from one declarative job spec.

    kiln train jobs/digits-cnn.yaml     # Ray Train, checkpoints, resume, registry
    kiln models show digits-cnn@staging

The public API is small: load a spec, run it, read the registry.
"""

__version__ = "0.1.0"
