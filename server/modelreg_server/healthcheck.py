"""`python -m modelreg_server.healthcheck`: a container health check over grpc.health.v1.

Exits 0 when Health/Check reports SERVING and 1 otherwise (not serving, unknown service, unreachable,
timed out), which is what Docker's HEALTHCHECK and Kubernetes exec probes expect. The default address is
the port of MODELREG_LISTEN on the loopback interface. Plaintext only, like the kubelet's `grpc:` probes;
deploy/README.md says what to do when the server terminates TLS itself.
"""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from modelreg_server.config import Settings

_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "[::]", "*"})


def local_address(listen: str) -> str:
    """Where to reach a server bound to `listen` from inside its container.

    Wildcard binds are reached over 127.0.0.1; a concrete host is used as it is.
    """
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or int(port) == 0:
        raise ValueError(f"cannot derive a port to check from listen address {listen!r}")
    return f"127.0.0.1:{port}" if host in _WILDCARD_HOSTS else listen


def probe(address: str, service: str = "", timeout: float = 3.0) -> str:
    """The status the server at `address` reports for `service` (`SERVING`, `NOT_SERVING`, ...), or the
    gRPC code of the failed call (`UNAVAILABLE`, `DEADLINE_EXCEEDED`, `NOT_FOUND` for an unknown service).
    """
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            return code.name if code is not None else "UNKNOWN_ERROR"
        name: str = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
        return name


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m modelreg_server.healthcheck",
        description="Exit 0 if the local modelreg server reports SERVING, else 1.",
    )
    parser.add_argument(
        "--address", help="host:port to check (default: 127.0.0.1 and MODELREG_LISTEN's port)"
    )
    parser.add_argument("--service", default="", help='service name to check (default "", the server)')
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds before giving up (default 3)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        address = args.address or local_address(Settings.from_env().listen)
    except ValueError as exc:
        print(f"healthcheck: {exc}", file=sys.stderr)
        return 1
    status = probe(address, args.service, args.timeout)
    if status == "SERVING":
        return 0
    print(f"healthcheck: {address} service {args.service!r}: {status}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
