"""The baseline for bench_serve: the same registered model in a plain FastAPI app on one
uvicorn process, one request at a time (no batching, no Ray), same request and answer shapes.

python -m tests.benchmarks.plain_server --registry DIR --model digits-cnn@1 --port 8100
"""

import argparse

import numpy as np
import torch
import uvicorn
from fastapi import FastAPI

from kiln.registry import ModelRegistry
from kiln.registry.loading import load_model


def build(registry: str, ref: str) -> FastAPI:
    torch.set_num_threads(1)  # as a Kiln replica
    loaded = load_model(ModelRegistry.open(registry), ref)
    model, name = loaded.module, loaded.version.name
    app = FastAPI()

    @app.post(f"/v2/models/{name}/infer")
    async def infer(body: dict) -> dict:  # async: requests run one at a time on the loop
        given = body["inputs"][0]
        x = torch.from_numpy(np.asarray(given["data"], np.float32).reshape(given["shape"]))
        with torch.inference_mode():
            probabilities = torch.softmax(model(x), dim=-1).numpy()
        output = {"name": "probabilities", "datatype": "FP32", "shape": list(probabilities.shape)}
        return {"model_name": name, "outputs": [{**output, "data": probabilities.ravel().tolist()}]}

    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--registry", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = build(args.registry, args.model)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)
