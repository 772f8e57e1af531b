"""Generated protobuf and gRPC modules for the wakeline.v1 API (see protos/)."""
