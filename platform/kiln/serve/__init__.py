"""Serving registered models on Ray Serve, in the Open Inference Protocol (KServe v2).

    kiln serve serving/digits.yaml        # or Ray's own: serve run serving/digits.yaml

A serving config's applications name `kiln.serve:model_app` (one per model) and
`kiln.serve:index_app` (health, metadata, docs).
"""

from kiln.serve.app import index_app, model_app, recommend_app

__all__ = ["index_app", "model_app", "recommend_app"]
