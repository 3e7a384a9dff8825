"""What runs inside a Ray Serve replica: one model (or the recommender) behind the Open
Inference Protocol.

    app.py        the deployments and the application builders serving configs name
    api.py        FastAPI apps of a model and of the server index; errors as protocol bodies
    grpc_service.py  the same over gRPC (inference.GRPCInferenceService); protos/ its stubs
    endpoint.py   a model following its alias, batching, versions kept loaded
    predictor.py  a loaded version per task: tensors in, tensors out
    protocol.py   the protocol's messages, decoded and encoded
    recommend.py  /v1/recommend and /v1/events over the Redis feature cache
    auth.py middleware.py metrics.py
"""
