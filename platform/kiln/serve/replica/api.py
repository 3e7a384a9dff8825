"""The HTTP side of serving: FastAPI apps for one model (mounted at /v2/models/{name}) and for
the server index (/, /v2, /v2/health/*, /docs). Errors are Open Inference Protocol bodies,
`{"error": "..."}`, with 400 for a bad request, 401, 404, 413, 415; never a traceback."""

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException

import kiln
from kiln.errors import KilnError, ModelNotFoundError, RequestError, UnknownArmError
from kiln.serve.replica import binary, kserve_v1, triton
from kiln.serve.replica.auth import ApiKeys
from kiln.serve.replica.endpoint import ModelEndpoint
from kiln.serve.replica.middleware import RequestBody, RootPathAsSlash
from kiln.serve.replica.protocol import (
    EXTENSIONS,
    ErrorBody,
    InferenceRequest,
    InferenceResponse,
    ModelMetadata,
    ServerMetadata,
    describe,
    narrow_to,
    parse_request,
)
from kiln.serve.replica.rollout import ARM_HEADER, Feedback
from kiln.serve.replica.served import not_served

log = logging.getLogger("ray.serve")
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 404, 413, 415, 429, 503)
}
# Optional: Triton's client sends none; parsed by the route, whatever the Content-Type.
INDEX_BODY = {
    "requestBody": {
        "required": False,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/RepositoryIndexRequest"}}
        },
    }
}
FORBIDDEN: dict[int | str, dict[str, Any]] = {403: {"model": ErrorBody}}
V1_ERRORS: dict[int | str, dict[str, Any]] = {**ERRORS, 502: {"model": ErrorBody}}
V1_BODY = {
    "requestBody": {
        "required": True,
        "description": (
            "One example per instance: a value (nested lists) for a model that takes one "
            'input, or an object by input name; files as base64 text or {"b64": ...}. '
            "Each model's own inputs: GET /v2/models/{name}."
        ),
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["instances"],
                    "properties": {"instances": {"type": "array", "minItems": 1}},
                }
            }
        },
    }
}
JSON = "application/json"
# The body is parsed by Kiln (any Content-Type, pydantic's JSON parser) and documented here.
INFER_BODY = {
    "requestBody": {
        "required": True,
        "description": (
            "JSON, or with the binary tensor data extension: send the header "
            f"{binary.HEADER_LENGTH}: N, the first N bytes are this JSON (inputs with a "
            "binary_data_size parameter instead of data), then each such input's raw "
            "little-endian bytes in order. Outputs come back in binary when the request's "
            "parameters say binary_data_output, or an output's say binary_data."
        ),
        "content": {
            JSON: {"schema": {"$ref": "#/components/schemas/InferenceRequest"}},
            binary.CONTENT_TYPE: {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


def model_api(endpoint: ModelEndpoint, keys: ApiKeys, max_body_bytes: int) -> FastAPI:
    api = FastAPI(
        title=f"Kiln model {endpoint.name}",
        version=kiln.__version__,
        description="Open Inference Protocol (KServe v2) endpoints of one model.",
    )
    api.add_middleware(RequestBody, max_bytes=max_body_bytes)
    api.add_middleware(RootPathAsSlash)
    answer_errors_as_protocol(api)

    def narrow(schemas: dict[str, Any]) -> None:
        current = endpoint.current
        narrow_to(
            schemas,
            current.inputs,
            current.value_bounds,
            current.outputs,
            current.optional_inputs,
            current.missing_ok,
            every_input=bool(current.columns),
        )

    document_schemas(api, InferenceRequest, narrow=narrow)

    @api.get("/", response_model=ModelMetadata, responses=ERRORS, dependencies=keys.required)
    def metadata() -> ModelMetadata:
        return endpoint.metadata()

    # Triton's model configuration and statistics extensions (kiln.serve.replica.triton)
    @api.get("/config", responses=ERRORS, dependencies=keys.required)
    def config() -> dict[str, Any]:
        return endpoint.triton_config(endpoint.current, max_body_bytes)

    @api.get("/versions/{version}/config", responses=ERRORS, dependencies=keys.required)
    async def version_config(version: int) -> dict[str, Any]:
        return endpoint.triton_config(await endpoint.predictor(version), max_body_bytes)

    @api.get("/stats", responses=ERRORS, dependencies=keys.required)
    async def stats() -> dict[str, Any]:
        return await endpoint.triton_statistics(None)

    @api.get("/versions/{version}/stats", responses=ERRORS, dependencies=keys.required)
    async def version_stats(version: int) -> dict[str, Any]:
        return await endpoint.triton_statistics(version)

    @api.get("/ready", responses=ERRORS)
    def ready() -> dict[str, bool]:
        return {"ready": True}  # a replica exists only once its model has loaded

    @api.get(
        "/versions/{version}",
        response_model=ModelMetadata,
        responses=ERRORS,
        dependencies=keys.required,
    )
    async def version_metadata(version: int) -> ModelMetadata:
        return endpoint.metadata(await endpoint.predictor(version))

    @api.get("/versions/{version}/ready", responses=ERRORS)
    async def version_ready(version: int) -> dict[str, bool]:
        await endpoint.predictor(version)  # loaded (and kept) now, or 404
        return {"ready": True}

    answers = {200: {"model": InferenceResponse}, **ERRORS}

    infer_route: dict[str, Any] = {
        "responses": answers,
        "openapi_extra": INFER_BODY,
        "dependencies": keys.required,
    }

    @api.post("/infer", **infer_route)
    async def infer(request: Request) -> Response:
        return await _timed(endpoint, request, None)

    @api.post("/versions/{version}/infer", **infer_route)
    async def infer_version(version: int, request: Request) -> Response:
        return await _timed(endpoint, request, version)

    # KServe V1, relayed here by the index from /v1/models/{name}:predict (kserve_v1.py)
    @api.post("/kserve-v1", include_in_schema=False, responses=ERRORS, dependencies=keys.required)
    async def predict_v1(request: Request) -> Response:
        return await _timed_v1(endpoint, request)

    @api.post("/feedback", responses=ERRORS, dependencies=keys.required)
    def feedback(given: Feedback) -> dict[str, int]:
        """Labelled outcomes of a rollout arm's answers, counted for `kiln rollout status`."""
        endpoint.labelled(given)
        return {"accepted": given.correct + given.wrong}

    return api


Answer = tuple[int, str | None, Response]  # the version that answered, the arm, the response


async def _timed(endpoint: ModelEndpoint, request: Request, version: int | None) -> Response:
    """An Open Inference Protocol inference, counted."""

    async def answer(key: str | None) -> Answer:
        body = parse_request(await request.body(), request.headers.get(binary.HEADER_LENGTH))
        answered, arm, content, header_length = await endpoint.infer(body, version, key)
        headers = {ARM_HEADER: arm} if arm else {}
        if header_length is None:
            return answered, arm, Response(content, media_type=JSON, headers=headers)
        headers[binary.HEADER_LENGTH] = str(header_length)
        return answered, arm, Response(content, media_type=binary.CONTENT_TYPE, headers=headers)

    return await _counted(endpoint, request, version, answer)


async def _timed_v1(endpoint: ModelEndpoint, request: Request) -> Response:
    """A KServe V1 prediction (kiln.serve.replica.kserve_v1), counted."""

    async def answer(key: str | None) -> Answer:
        current = endpoint.current
        optional = [tensor for tensor, _ in current.optional_inputs]
        body = await request.body()
        asked = kserve_v1.to_request(body, current.inputs, optional, bool(current.columns))
        answered, arm, outputs = await endpoint.predict(asked, None, key)
        content = json.dumps({"predictions": kserve_v1.predictions(outputs)})
        headers = {ARM_HEADER: arm} if arm else {}
        return answered, arm, Response(content, media_type=JSON, headers=headers)

    return await _counted(endpoint, request, None, answer)


async def _counted(
    endpoint: ModelEndpoint,
    request: Request,
    version: int | None,
    answer: Callable[[str | None], Awaitable[Answer]],
) -> Response:
    """`answer(key)` for the request's sticky key, its errors as the protocol's bodies; the
    answer counted (metrics, access log, statistics) with its status and latency."""
    start = time.perf_counter()
    code, answered, arm = 200, version or endpoint.current.version, None
    rollout = endpoint.rollout
    key = request.headers.get(rollout.sticky_header) if rollout and rollout.sticky_header else None
    try:
        answered, arm, response = await answer(key)
        return response
    except KilnError as e:
        code = status_of(e)
        return JSONResponse({"error": str(e)}, code)
    finally:
        endpoint.answered(answered, code, (time.perf_counter() - start) * 1000, arm)


def kserve_v1_routes(
    api: FastAPI,
    prefix: str,
    models: Callable[[], Awaitable[dict[str, bool]]],
    relay_v1: Callable[[str, bytes, dict[str, str]], Awaitable[Response]],
) -> None:
    """KServe V1 (its SDK's default protocol) at `prefix`/models: every served model's
    readiness, and its predictions answered by the model's own app (relay.py). The index
    answers them at /v1; an application that owns /v1 (recsys.yaml's recommendations) too."""

    # `:predict` comes first: for a method neither route has (OPTIONS), Starlette answers
    # with the first route whose path matches, and `{name}` alone matches "NAME:predict".
    @api.post(prefix + "/models/{name}:predict", responses=V1_ERRORS, openapi_extra=V1_BODY)
    async def v1_predict(name: str, request: Request) -> Response:
        return await relay_v1(name, await request.body(), dict(request.headers))

    @api.get(prefix + "/models")
    async def v1_models() -> dict[str, list[str]]:
        return {"models": sorted(await models())}

    @api.get(prefix + "/models/{name}", responses=ERRORS)
    async def v1_model_ready(name: str) -> JSONResponse:
        served = await models()
        if name not in served:
            return _error(*not_served(name, served))
        return JSONResponse({"name": name, "ready": served[name]}, 200 if served[name] else 503)


def index_api(
    models: Callable[[], Awaitable[dict[str, bool]]],
    relay_v1: Callable[[str, bytes, dict[str, str]], Awaitable[Response]],
    max_body_bytes: int,
) -> FastAPI:
    """`models()` gives each served model's name and whether it is ready; `relay_v1(name,
    body, headers)` has the model's own app answer a KServe V1 prediction (served.ModelRelay),
    whose body is at most `max_body_bytes` here (decoded, as a model's own app reads it)."""
    api = FastAPI(
        title="Kiln",
        version=kiln.__version__,
        description=(
            "Registered models behind the Open Inference Protocol (KServe v2 REST). Each model "
            "answers under /v2/models/{name} and documents its own routes and tensors at "
            "/v2/models/{name}/docs (and openapi.json); this app answers health, server "
            "metadata and names that are not served, and KServe V1 (/v1/models/{name} and "
            'its :predict, {"instances": [...]}) for every model.'
        ),
    )
    api.add_middleware(RequestBody, max_bytes=max_body_bytes)
    answer_errors_as_protocol(api)
    document_schemas(api, triton.RepositoryIndexRequest)

    @api.get("/")
    async def index() -> dict[str, Any]:
        served = await models()
        return {
            "server": "kiln",
            "status": "alive",  # KServe V1's liveness answer, at its path
            "models": {m: f"/v2/models/{m}" for m in served},
            "docs": "/docs",
        }

    @api.get("/v2", response_model=ServerMetadata)
    def server_metadata() -> ServerMetadata:
        extensions = [*EXTENSIONS, *triton.EXTENSIONS]
        return ServerMetadata(name="kiln", version=kiln.__version__, extensions=extensions)

    @api.get("/v2/health/live")
    def live() -> dict[str, bool]:
        return {"live": True}

    @api.get("/v2/health/ready", responses=ERRORS)
    async def ready() -> JSONResponse:
        served = await models()
        ok = bool(served) and all(served.values())
        return JSONResponse({"ready": ok, "models": served}, 200 if ok else 503)

    @api.post("/v2/repository/index", responses=ERRORS, openapi_extra=INDEX_BODY)
    async def repository_index(request: Request) -> list[dict[str, str]]:
        try:
            asked = triton.RepositoryIndexRequest.model_validate_json(await request.body() or "{}")
        except ValidationError as e:
            raise RequestError(describe(e.errors())) from None
        return triton.repository_index(await models(), asked.ready)

    @api.post("/v2/repository/models/{name}/load", responses=ERRORS)
    async def load(name: str) -> JSONResponse:
        refused = triton.load_refused(name, await models())
        return JSONResponse({}) if refused is None else _error(*refused)

    @api.post("/v2/repository/models/{name}/unload", responses={**ERRORS, **FORBIDDEN})
    async def unload(name: str) -> JSONResponse:
        return _error(*triton.unload_refused(name, await models()))

    kserve_v1_routes(api, "/v1", models, relay_v1)

    # A request reaches these only when no model app owns its name (the proxy routes by the
    # longest prefix): a 404 that names the served models. Each model documents these routes
    # exactly in its own document; a generic one here would promise any tensor to any model.
    unlisted: dict[str, Any] = {"responses": ERRORS, "include_in_schema": False}
    for path in MODEL_PATHS:
        api.get(path, **unlisted)(_not_served_route(models))
    for path in (
        "/v2/models/{name}/infer",
        "/v2/models/{name}/versions/{version}/infer",
        "/v2/models/{name}/kserve-v1",  # where the index relays KServe V1 (served.ModelRelay)
    ):
        api.post(path, **unlisted)(_not_served_route(models))
    return api


MODEL_PATHS = [
    "/v2/models/{name}",
    "/v2/models/{name}/ready",
    "/v2/models/{name}/versions/{version}",
    "/v2/models/{name}/versions/{version}/ready",
    "/v2/models/{name}/config",
    "/v2/models/{name}/versions/{version}/config",
    "/v2/models/{name}/stats",
    "/v2/models/{name}/versions/{version}/stats",
]


def _not_served_route(
    models: Callable[[], Awaitable[dict[str, bool]]],
) -> Callable[[str], Awaitable[JSONResponse]]:
    async def route(name: str) -> JSONResponse:
        return _error(*not_served(name, await models()))

    return route


def _error(status: int, error: str) -> JSONResponse:
    """An error answer; a 503 (a model still deploying) says when to retry."""
    retry = {"Retry-After": "5"} if status == 503 else None
    return JSONResponse({"error": error}, status, retry)


def status_of(error: KilnError) -> int:
    """The HTTP status of an error a request caused: a model, version or arm that is not
    there is 404, any other mistake in the request 400."""
    return 404 if isinstance(error, ModelNotFoundError | UnknownArmError) else 400


def answer_errors_as_protocol(api: FastAPI) -> None:
    @api.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": describe(exc.errors())}, 400)

    @api.exception_handler(KilnError)
    async def kiln_error(request: Request, exc: KilnError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_of(exc))

    @api.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": exc.detail}, exc.status_code, exc.headers)

    @api.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error answering %s", request.url.path)
        return JSONResponse({"error": f"internal error: {type(exc).__name__}"}, 500)


def document_schemas(
    api: FastAPI,
    *models: type[BaseModel],
    narrow: Callable[[dict[str, Any]], None] | None = None,
) -> None:
    """Add request models that no route declares as a parameter to the OpenAPI components;
    `narrow(schemas)` may then tighten them to what this app accepts."""
    generate = api.openapi

    def openapi() -> dict[str, Any]:
        if api.openapi_schema is None:
            components = generate().setdefault("components", {}).setdefault("schemas", {})
            for model in models:
                body = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(body.pop("$defs", {}))
                components[model.__name__] = body
            if narrow is not None:
                narrow(components)
        return api.openapi_schema or {}

    api.openapi = openapi  # type: ignore[method-assign]
