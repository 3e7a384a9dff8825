"""Generated gRPC stubs of the Open Inference Protocol (`make protos`); do not edit them."""
