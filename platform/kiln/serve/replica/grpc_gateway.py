"""A gRPC port for clients that name their model only in the message, as Triton's and KServe's
clients do with their default settings.

Ray Serve routes a gRPC call by its `application` metadata alone (HAProxy and Serve's own proxy
alike; only a cluster with a single application is a default), so `client.infer("digits-cnn", ...)`
without `headers={"application": "digits-cnn"}` is NOT_FOUND once several models are served.
The gateway, run by the index application's replica where its args set `grpc_gateway_port`,
reads the model's name from each call's message (`name`, or `model_name` in ModelInfer), adds
it as the `application` metadata when the call has none, and relays the call, its bytes
unchanged, to Serve's gRPC ingress on its node. Status, details and trailing metadata come
back as the model's replica answered them; server-level calls
(ServerLive, ServerReady, ServerMetadata, the model repository's) go to the index application.

It is written by hand because no proxy routes on a field of a protobuf body: Envoy and HAProxy
route gRPC on its path and headers only, which is what Serve does already.
"""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import DecodeError
from grpc_reflection.v1alpha import reflection

from kiln.errors import RequestError, ServeError
from kiln.serve.replica.protos import open_inference_pb2 as pb
from kiln.serve.replica.served import serve_ingress

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
UNLIMITED = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
# Metadata that belongs to one hop of HTTP/2 (the relay sets its own) or is the call's deadline
# (relayed as the relay's timeout).
HOP_BY_HOP = {"user-agent", "te", "content-type", "grpc-timeout", "grpc-encoding"}
Handler = Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]


class GrpcGateway(grpc.GenericRpcHandler):
    """Every `inference.GRPCInferenceService` call relayed to `upstream` (host:port, Serve's gRPC
    ingress) with the `application` its message names; calls without a model go to `index`."""

    def __init__(self, upstream: str, index: str):
        self.channel = grpc.aio.insecure_channel(upstream, options=UNLIMITED)
        self.index = index
        relays = (self._relay(method) for method in SERVICE.methods)
        self.handlers = {path: grpc.unary_unary_rpc_method_handler(h) for path, h in relays}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        """The call's handler; None (UNIMPLEMENTED) for methods the protocol does not have."""
        return self.handlers.get(handler_call_details.method)

    def _relay(self, method: MethodDescriptor) -> tuple[str, Handler]:
        """The method's path and the handler that relays its calls."""
        path = f"/{SERVICE.full_name}/{method.name}"
        upstream = self.channel.unary_unary(path)  # bytes in, bytes out
        application_of = self._application_of(method)

        async def relay(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            try:
                application = application_of(request)
            except RequestError as e:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            call = upstream(
                request,
                metadata=_metadata(context.invocation_metadata() or (), application),
                timeout=context.time_remaining(),
            )
            try:
                response: bytes = await call
            except grpc.aio.AioRpcError as e:
                trailing = tuple(e.trailing_metadata() or ())
                await context.abort(e.code(), e.details() or "", trailing)
            context.set_trailing_metadata(tuple(await call.trailing_metadata() or ()))
            return response

        return path, relay

    def _application_of(self, method: MethodDescriptor) -> Callable[[bytes], str]:
        """The application a call of `method` goes to: the model its message names, or the
        index for the server-level calls; RequestError for a message that names none."""
        fields = method.input_type.fields_by_name
        field = fields.get("model_name") or fields.get("name")
        if field is None or method.name.startswith("Repository"):  # the index's own calls
            return lambda request: self.index
        parse = message_factory.GetMessageClass(method.input_type).FromString

        def model_named(request: bytes) -> str:
            try:
                name = str(getattr(parse(request), field.name))
            except DecodeError:
                raise RequestError(f"{method.name}: not a {method.input_type.name}") from None
            if not name:
                raise RequestError(f"{method.name}: the request names no model ({field.name})")
            return name

        return model_named

    async def serve(self, host: str, port: int) -> grpc.aio.Server:
        server = grpc.aio.server(options=UNLIMITED)
        server.add_generic_rpc_handlers([self])
        # Server reflection: grpcurl, Postman and Evans list and call the protocol's methods
        # without its .proto file (from Kiln's own descriptor pool, see `make protos`).
        names = [SERVICE.full_name, reflection.SERVICE_NAME]
        reflection.enable_server_reflection(names, server, pool=pb.DESCRIPTOR.pool)
        if not server.add_insecure_port(f"{host}:{port}"):
            raise ServeError(f"grpc_gateway_port {port}: cannot listen on {host}:{port}")
        await server.start()
        return server


def _metadata(given: Any, application: str) -> list[tuple[str, Any]]:
    """The call's metadata for the next hop, with `application` unless the call names one."""
    kept = [(k, v) for k, v in given if k not in HOP_BY_HOP and not k.startswith(":")]
    if not any(k == "application" for k, _ in kept):
        kept.append(("application", application))
    return kept


async def start_gateway(port: int, index: str) -> grpc.aio.Server:
    """The gateway on `port` of this node, relaying to Serve's gRPC ingress on the same node,
    bound to the host Serve's own ingress binds (its HTTP host)."""
    ingress = await asyncio.to_thread(serve_ingress)
    if ingress.grpc_port is None:
        raise ServeError(
            "grpc_gateway_port needs the serving config's grpc_options "
            "(its port and grpc_servicer_functions)"
        )
    gateway = GrpcGateway(ingress.on_this_node(ingress.grpc_port), index)
    return await gateway.serve("[::]" if ingress.every_interface else ingress.host, port)
