"""routing.v1: the .proto and the stubs generated from it by `python -m prismops.gateway_grpc.codegen`."""
