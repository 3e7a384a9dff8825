"""Serving registered models on Ray Serve, in the Open Inference Protocol (KServe v2).

    kiln serve serving/digits.yaml        # or Ray's own: serve run serving/digits.yaml

    replica/    what runs inside Serve replicas: the application builders a serving config
                names (`kiln.serve:model_app`, `index_app`, `recommend_app`), the protocol,
                predictors, endpoints and their HTTP apps
    control/    what runs beside the cluster: checking and deploying serving configs, waiting
                for the ingress, and `kiln serve status`
    config.py   what a serving config may say to the builders: the contract between the two

The builders are imported on first use, so that the control plane never loads torch.
"""

from typing import Any

__all__ = ["index_app", "model_app", "recommend_app"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from kiln.serve.replica import app

        return getattr(app, name)
    raise AttributeError(name)
