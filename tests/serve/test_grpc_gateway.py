"""The gateway's relay between two real gRPC servers in this process, no Ray: which application
a call is sent to, metadata and answers passed on, malformed calls refused. The gateway in front
of Ray Serve, with Triton's client: test_grpc.py."""

import asyncio

import grpc
import pytest

from kiln.serve.replica.grpc_gateway import GrpcGateway
from kiln.serve.replica.protos import open_inference_pb2 as pb
from tests.conftest import free_port

SERVICE = "/inference.GRPCInferenceService"


class Ingress(grpc.GenericRpcHandler):
    """Where Serve's gRPC ingress stands: it answers every call with the `application` and
    `authorization` metadata it received (as a ModelInferResponse's model_name and id), and
    an application named "missing" with Ray's NOT_FOUND."""

    def service(self, handler_call_details):
        async def answer(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            metadata = dict(context.invocation_metadata())
            if metadata["application"] == "missing":
                await context.abort(grpc.StatusCode.NOT_FOUND, "Application 'missing' not found")
            seen = pb.ModelInferResponse(
                model_name=metadata["application"], id=metadata.get("authorization", "")
            )
            return seen.SerializeToString()

        return grpc.unary_unary_rpc_method_handler(answer)


async def a_gateway() -> tuple[int, list[grpc.aio.Server]]:
    """A gateway in front of an Ingress: the gateway's port, and both servers."""
    ingress = grpc.aio.server()
    ingress.add_generic_rpc_handlers([Ingress()])
    upstream = free_port()
    ingress.add_insecure_port(f"127.0.0.1:{upstream}")
    await ingress.start()
    port = free_port()
    gateway = await GrpcGateway(f"127.0.0.1:{upstream}", "kiln").serve("127.0.0.1", port)
    return port, [gateway, ingress]


async def relayed(calls):
    """`calls(call)` against a gateway in front of an Ingress; call(method, message or bytes,
    metadata) gives what the ingress saw, or the status code and details of the failure."""
    gateway_port, servers = await a_gateway()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway_port}") as channel:

        async def call(method, message, metadata=()):
            body = message if isinstance(message, bytes) else message.SerializeToString()
            invoke = channel.unary_unary(
                f"{SERVICE}/{method}", response_deserializer=pb.ModelInferResponse.FromString
            )
            try:
                seen = await invoke(body, metadata=metadata, timeout=10)
                return seen.model_name, seen.id
            except grpc.aio.AioRpcError as e:
                return e.code(), e.details()

        try:
            return await calls(call)
        finally:
            for server in servers:
                await server.stop(None)


def test_each_call_goes_to_the_application_its_message_names():
    async def calls(call):
        return [
            await call("ModelInfer", pb.ModelInferRequest(model_name="digits-cnn")),
            await call("ModelMetadata", pb.ModelMetadataRequest(name="digits-mlp")),
            await call("ModelReady", pb.ModelReadyRequest(name="digits-rnn", version="2")),
            await call("ServerLive", pb.ServerLiveRequest()),  # the server's own: the index
            await call("RepositoryModelLoad", pb.RepositoryModelLoadRequest(model_name="x")),
            await call(  # a call that names its application keeps it
                "ModelInfer", pb.ModelInferRequest(model_name="a"), (("application", "b"),)
            ),
            await call(  # the rest of its metadata travels with it
                "ModelInfer", pb.ModelInferRequest(model_name="a"), (("authorization", "K"),)
            ),
        ]

    assert asyncio.run(relayed(calls)) == [
        ("digits-cnn", ""),
        ("digits-mlp", ""),
        ("digits-rnn", ""),
        ("kiln", ""),
        ("kiln", ""),
        ("b", ""),
        ("a", "K"),
    ]


@pytest.mark.parametrize(
    "method, body, code, details",
    [
        ("ModelInfer", pb.ModelInferRequest(), "INVALID_ARGUMENT", "names no model (model_name)"),
        ("ModelInfer", b"\xff\xff\xff", "INVALID_ARGUMENT", "not a ModelInferRequest"),
        ("ModelReady", pb.ModelReadyRequest(name="missing"), "NOT_FOUND", "'missing' not found"),
        ("NoSuchMethod", pb.ServerLiveRequest(), "UNIMPLEMENTED", ""),
    ],
)
def test_a_call_refused_here_or_upstream_says_why(method, body, code, details):
    async def calls(call):
        return await call(method, body)

    got_code, got_details = asyncio.run(relayed(calls))
    assert got_code == getattr(grpc.StatusCode, code) and details in (got_details or "")


def test_a_client_without_the_proto_file_finds_and_calls_the_protocol():
    """grpcurl's way: the service and its messages from server reflection, then a call made
    with them alone: ModelMetadata for digits-cnn reaches the ingress as that application (it
    answers with the application's name in field 1, which is ModelMetadataResponse's name)."""
    from google.protobuf import descriptor_pool, message_factory
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    def by_reflection(address: str) -> tuple[set[str], str]:
        with grpc.insecure_channel(address) as channel:
            database = ProtoReflectionDescriptorDatabase(channel)
            service = descriptor_pool.DescriptorPool(database).FindServiceByName(
                "inference.GRPCInferenceService"
            )
            method = service.FindMethodByName("ModelMetadata")
            request = message_factory.GetMessageClass(method.input_type)(name="digits-cnn")
            answer = channel.unary_unary(f"/{service.full_name}/{method.name}")(
                request.SerializeToString(), timeout=10
            )
            response = message_factory.GetMessageClass(method.output_type).FromString(answer)
            return set(database.get_services()), response.name

    async def through_a_gateway() -> tuple[set[str], str]:
        port, servers = await a_gateway()
        try:
            return await asyncio.to_thread(by_reflection, f"127.0.0.1:{port}")
        finally:
            for server in servers:
                await server.stop(None)

    services, answered_by = asyncio.run(through_a_gateway())
    assert "inference.GRPCInferenceService" in services
    assert answered_by == "digits-cnn"
