"""The gRPC side of serving: the Open Inference Protocol's `inference.GRPCInferenceService`
(KServe v2 gRPC, what Triton's and KServe's gRPC clients call), answered by each model's replica.

Ray Serve's gRPC ingress calls a deployment's method of the RPC's name (`ModelInfer`, ...) in the
application that the call's `application` metadata names, so a client reaches a model by
sending `application: <model's application name>` with every call (Triton's clients take it
as `headers=`). API keys travel as `authorization: Bearer <key>`. Tensors come and go as
`raw_input_contents` / `raw_output_contents` (or typed `contents` on the way in), decoded and
checked by the same code as the REST path, with its error messages:

    400 -> INVALID_ARGUMENT    401 -> UNAUTHENTICATED    403 -> PERMISSION_DENIED
    404 -> NOT_FOUND           503 -> UNAVAILABLE
"""

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import numpy as np
from google.protobuf import json_format
from ray.serve.grpc_util import RayServegRPCContext

import kiln
from kiln.errors import KilnError, ModelNotFoundError, RequestError
from kiln.serve.replica import binary, triton
from kiln.serve.replica.auth import ApiKeys
from kiln.serve.replica.endpoint import ModelEndpoint
from kiln.serve.replica.protocol import (
    EXTENSIONS,
    InferenceRequest,
    RequestInput,
    RequestOutput,
    TensorMetadata,
    datatype_of,
)
from kiln.serve.replica.protos import open_inference_pb2 as pb
from kiln.serve.replica.served import served_models

# What a serving config's grpc_options.grpc_servicer_functions names.
SERVICER = (
    "kiln.serve.replica.protos.open_inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server"
)
HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
# Typed contents: the repeated field that holds each datatype's values (FP16 travels raw).
CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
Response = TypeVar("Response")


class Unauthenticated(KilnError):
    pass


class ServerService:
    """The server-level calls (health, metadata, the model repository), answered by any Kiln
    application."""

    async def ServerLive(
        self, request: pb.ServerLiveRequest, grpc_context: RayServegRPCContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, grpc_context: RayServegRPCContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=True)  # a replica answers once its model loaded

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, grpc_context: RayServegRPCContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name="kiln", version=kiln.__version__, extensions=EXTENSIONS
        )

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, grpc_context: RayServegRPCContext
    ) -> pb.RepositoryIndexResponse:
        listed = triton.repository_index(await served_models(), request.ready)
        return pb.RepositoryIndexResponse(
            models=[pb.RepositoryIndexResponse.ModelIndex(**model) for model in listed]
        )

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, grpc_context: RayServegRPCContext
    ) -> pb.RepositoryModelLoadResponse:
        if refused := triton.load_refused(request.model_name, await served_models()):
            _status(grpc_context, *refused)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, grpc_context: RayServegRPCContext
    ) -> pb.RepositoryModelUnloadResponse:
        _status(grpc_context, *triton.unload_refused(request.model_name, await served_models()))
        return pb.RepositoryModelUnloadResponse()


def _status(grpc_context: RayServegRPCContext, http: int, message: str) -> None:
    """The call's status code for the REST path's `http` status, and its message."""
    code = next((c for c, status in HTTP_STATUS.items() if status == http), None)
    grpc_context.set_code(code or grpc.StatusCode.UNKNOWN)
    grpc_context.set_details(message)


class ModelService(ServerService):
    """The model-level calls, for a deployment with a model `endpoint` and its API `keys`."""

    endpoint: ModelEndpoint
    keys: ApiKeys
    max_body_bytes: int

    async def ModelReady(
        self, request: pb.ModelReadyRequest, grpc_context: RayServegRPCContext
    ) -> pb.ModelReadyResponse:
        async def ready() -> pb.ModelReadyResponse:
            version = self._version_of(request.name, request.version)
            try:
                await self.endpoint.predictor(version)  # loaded (and kept) now
            except ModelNotFoundError:  # no such version: not ready, as REST's 404 says
                return pb.ModelReadyResponse(ready=False)
            return pb.ModelReadyResponse(ready=True)

        return await self._answer(grpc_context, ready, pb.ModelReadyResponse, keyed=False)

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, grpc_context: RayServegRPCContext
    ) -> pb.ModelMetadataResponse:
        async def metadata() -> pb.ModelMetadataResponse:
            version = self._version_of(request.name, request.version)
            described = self.endpoint.metadata(await self.endpoint.predictor(version))
            return pb.ModelMetadataResponse(
                name=described.name,
                versions=described.versions,
                platform=described.platform,
                inputs=[_tensor_metadata(t) for t in described.inputs],
                outputs=[_tensor_metadata(t) for t in described.outputs],
            )

        return await self._answer(grpc_context, metadata, pb.ModelMetadataResponse)

    async def ModelConfig(
        self, request: pb.ModelConfigRequest, grpc_context: RayServegRPCContext
    ) -> pb.ModelConfigResponse:
        async def config() -> pb.ModelConfigResponse:
            version = self._version_of(request.name, request.version)
            predictor = await self.endpoint.predictor(version)
            described = self.endpoint.triton_config(predictor, self.max_body_bytes)
            return pb.ModelConfigResponse(config=json_format.ParseDict(described, pb.ModelConfig()))

        return await self._answer(grpc_context, config, pb.ModelConfigResponse)

    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, grpc_context: RayServegRPCContext
    ) -> pb.ModelStatisticsResponse:
        async def statistics() -> pb.ModelStatisticsResponse:
            version = self._version_of(request.name, request.version)
            counted = await self.endpoint.triton_statistics(version)
            return json_format.ParseDict(counted, pb.ModelStatisticsResponse())

        return await self._answer(grpc_context, statistics, pb.ModelStatisticsResponse)

    async def ModelInfer(
        self, request: pb.ModelInferRequest, grpc_context: RayServegRPCContext
    ) -> pb.ModelInferResponse:
        start, answered, arm = time.perf_counter(), None, None

        async def infer() -> pb.ModelInferResponse:
            nonlocal answered, arm
            version = self._version_of(request.model_name, request.model_version)
            key = sticky_key(self.endpoint, grpc_context)
            answered, arm, outputs = await self.endpoint.answer(from_grpc(request), version, key)
            response = to_grpc(self.endpoint.name, answered, request.id, outputs)
            if arm:
                response.parameters["arm"].string_param = arm
            return response

        try:
            return await self._answer(grpc_context, infer, pb.ModelInferResponse)
        finally:
            latency_ms = (time.perf_counter() - start) * 1000
            code = http_status(grpc_context.code())
            self.endpoint.answered(answered or self.endpoint.current.version, code, latency_ms, arm)

    async def _answer(
        self,
        grpc_context: RayServegRPCContext,
        answer: Callable[[], Awaitable[Response]],
        empty: Callable[[], Response],
        keyed: bool = True,
    ) -> Response:
        """`answer()`, or an empty message with the error's status code and message. `keyed`:
        the call needs an API key (readiness, as over REST, does not)."""
        try:
            if keyed:
                self._authenticate(grpc_context)
            return await answer()
        except Unauthenticated as e:
            grpc_context.set_code(grpc.StatusCode.UNAUTHENTICATED)
            grpc_context.set_details(str(e))
        except KilnError as e:
            not_found = isinstance(e, ModelNotFoundError)
            grpc_context.set_code(
                grpc.StatusCode.NOT_FOUND if not_found else grpc.StatusCode.INVALID_ARGUMENT
            )
            grpc_context.set_details(str(e))
        return empty()

    def _authenticate(self, grpc_context: RayServegRPCContext) -> None:
        if self.keys.open:
            return
        metadata = dict(grpc_context.invocation_metadata())
        scheme, _, key = str(metadata.get("authorization", "")).partition(" ")
        if scheme.lower() != "bearer" or not self.keys.matches(key.strip()):
            raise Unauthenticated("a valid API key is required: authorization: Bearer <key>")

    def _version_of(self, model: str, version: str) -> int | None:
        """The version a call names ('' follows the alias), once it names this model."""
        if model != self.endpoint.name:
            raise ModelNotFoundError(
                f"this is the application of model {self.endpoint.name!r}, not {model!r}: "
                "send the model's application name as the `application` metadata"
            )
        if not version:
            return None
        if not version.isdigit():
            raise RequestError(f"model_version must be a version number; got {version!r}")
        return int(version)


class IndexService(ServerService):
    """The index application serves no model: model calls that reach it are told how to
    reach the model's own application."""

    async def ModelInfer(
        self, request: pb.ModelInferRequest, grpc_context: RayServegRPCContext
    ) -> pb.ModelInferResponse:
        return _not_here(grpc_context, request.model_name, pb.ModelInferResponse)

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, grpc_context: RayServegRPCContext
    ) -> pb.ModelMetadataResponse:
        return _not_here(grpc_context, request.name, pb.ModelMetadataResponse)

    async def ModelReady(
        self, request: pb.ModelReadyRequest, grpc_context: RayServegRPCContext
    ) -> pb.ModelReadyResponse:
        return _not_here(grpc_context, request.name, pb.ModelReadyResponse)

    async def ModelConfig(
        self, request: pb.ModelConfigRequest, grpc_context: RayServegRPCContext
    ) -> pb.ModelConfigResponse:
        return _not_here(grpc_context, request.name, pb.ModelConfigResponse)

    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, grpc_context: RayServegRPCContext
    ) -> pb.ModelStatisticsResponse:
        return _not_here(grpc_context, request.name, pb.ModelStatisticsResponse)


def _not_here(
    grpc_context: RayServegRPCContext, model: str, empty: Callable[[], Response]
) -> Response:
    grpc_context.set_code(grpc.StatusCode.NOT_FOUND)
    grpc_context.set_details(
        f"the index application serves no model: send `application: {model}` "
        "(the model's application name) with the call"
    )
    return empty()


def sticky_key(endpoint: ModelEndpoint, context: RayServegRPCContext) -> str | None:
    """The rollout's sticky key from the call's metadata (gRPC keys are lower case)."""
    rollout = endpoint.rollout
    if rollout is None or not rollout.sticky_header:
        return None
    wanted = rollout.sticky_header.lower()
    return next((value for key, value in context.invocation_metadata() if key == wanted), None)


def from_grpc(request: pb.ModelInferRequest) -> InferenceRequest:
    """The call as the REST path's request, so that both decode and check tensors alike; raw
    contents stay views of the message's bytes."""
    raws = request.raw_input_contents
    if raws and len(raws) != len(request.inputs):
        raise RequestError(
            f"raw_input_contents has {len(raws)} entries for {len(request.inputs)} inputs"
        )
    inputs = []
    for index, tensor in enumerate(request.inputs):
        given = RequestInput(
            name=tensor.name,
            shape=list(tensor.shape),
            datatype=tensor.datatype,
            parameters=_parameters(tensor.parameters),
            data=None if raws else _contents(tensor),
        )
        given._raw = memoryview(raws[index]) if raws else None
        inputs.append(given)
    if not inputs:
        raise RequestError("inputs: send exactly one input; got 0")
    outputs = [
        RequestOutput(name=o.name, parameters=_parameters(o.parameters)) for o in request.outputs
    ]
    return InferenceRequest(
        id=request.id or None,
        parameters=_parameters(request.parameters),
        inputs=inputs,
        outputs=outputs or None,
    )


def to_grpc(
    model: str, version: int, request_id: str, outputs: dict[str, np.ndarray]
) -> pb.ModelInferResponse:
    """Every output as raw little-endian bytes, as Triton answers."""
    response = pb.ModelInferResponse(model_name=model, model_version=str(version), id=request_id)
    for name, array in outputs.items():
        response.outputs.add(name=name, datatype=datatype_of(array), shape=array.shape)
        response.raw_output_contents.append(binary.to_bytes(array))
    return response


def _contents(tensor: Any) -> list[Any]:
    field = CONTENTS.get(tensor.datatype)
    if field is None or not tensor.HasField("contents"):
        raise RequestError(
            f"input {tensor.name!r} has no contents for datatype {tensor.datatype} "
            "(nor raw_input_contents)"
        )
    return list(getattr(tensor.contents, field))


def _parameters(given: Any) -> dict[str, Any] | None:
    values = {
        key: getattr(p, p.WhichOneof("parameter_choice") or "")
        for key, p in given.items()
        if p.WhichOneof("parameter_choice")
    }
    return values or None


def _tensor_metadata(tensor: TensorMetadata) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(
        name=tensor.name, datatype=tensor.datatype, shape=tensor.shape
    )


def http_status(code: grpc.StatusCode | None) -> int:
    """A call's status as the HTTP status it stands for (metrics and `kiln bench` count REST
    calls by HTTP status); codes without one count as 500."""
    return HTTP_STATUS.get(code or grpc.StatusCode.OK, 500)
