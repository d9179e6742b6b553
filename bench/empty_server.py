"""The reference server: grpc.aio handlers that do nothing but return a fixed, pre-serialized payload.

Benchmarks compare the registry with this server, started as a separate process and called with the same
client code, so a figure can be read as "N times the cost of an empty gRPC round trip" on whatever machine
it ran. Every `NAME.bin` file in the payload directory becomes the method `/bench.EmptyService/NAME`, which
ignores its request (raw bytes, never parsed) and answers with the file's bytes.

Usage: python -m bench.empty_server --payload-dir DIR [--listen 127.0.0.1:0]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

SERVICE = "bench.EmptyService"

Handler = Callable[[bytes, grpc.aio.ServicerContext[Any, Any]], Awaitable[bytes]]


def method_path(name: str) -> str:
    """The full method path that serves payload `name`."""
    return f"/{SERVICE}/{name}"


def _replier(payload: bytes) -> Handler:
    async def reply(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        return payload

    return reply


async def serve(payloads: dict[str, bytes], listen: str) -> None:
    """Serves each payload as its own method until SIGTERM or SIGINT."""
    # No (de)serializers: the handler sees and returns bytes, so the server does no protobuf work at all.
    handlers = {name: grpc.unary_unary_rpc_method_handler(_replier(data)) for name, data in payloads.items()}
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port(listen)
    await server.start()
    host = listen.rsplit(":", 1)[0]
    print(f"empty-server listening on {host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(1.0)


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--payload-dir", type=Path, required=True, help="directory of NAME.bin responses")
    parser.add_argument("--listen", default="127.0.0.1:0", help="host:port (default: a free port)")
    args = parser.parse_args()
    payloads = {path.stem: path.read_bytes() for path in sorted(args.payload_dir.glob("*.bin"))}
    if not payloads:
        raise SystemExit(f"empty_server: no *.bin payloads in {args.payload_dir}")
    asyncio.run(serve(payloads, args.listen))


if __name__ == "__main__":
    main()
