"""Generated protobuf and gRPC modules for modelreg.v1. Do not edit: run `make protos`."""
