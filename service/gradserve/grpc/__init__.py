"""gRPC transport: inference.GRPCInferenceService (V2), grpc.health.v1 and reflection.

``server.GrpcServer`` runs on the same event loop as the HTTP server (grpc.aio) and
calls the same engine; ``servicer`` is the thin decode -> engine -> encode layer;
``generated`` holds the stubs made from proto/inference.proto by scripts/gen_proto.sh.
"""
