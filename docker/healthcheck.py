"""Container healthcheck: exit 0 when a gRPC server's standard health service says SERVING.

    python docker/healthcheck.py HOST:PORT [SERVICE]
"""

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main() -> int:
    target = sys.argv[1]
    service = sys.argv[2] if len(sys.argv) > 2 else ""
    with grpc.insecure_channel(target) as ch:
        try:
            r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service), timeout=3)
        except grpc.RpcError as e:
            print(f"{target}: {e.code().name}", file=sys.stderr)
            return 1
    ok = r.status == health_pb2.HealthCheckResponse.SERVING
    print(f"{target} {service or '(server)'}: {health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
