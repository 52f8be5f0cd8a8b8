"""Baseline for bench/ingest.py: a bare aiosmtpd server; DATA gets 250 and nothing is kept.

It runs aiosmtpd the way mailsink does (same SMTP class options, listener on the running loop), so
the gap between the two is what mailsink adds: its command loop, transcripts, parsing and the
committed write before each 250.

    python bench/reference_server.py --port 2525
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

DATA_SIZE_LIMIT = 25 * 1024 * 1024  # mailsink's default max_message_size
# Explicit, because aiosmtpd otherwise asks the resolver for the FQDN at start-up.
HOSTNAME = "bench-reference"


class DiscardHandler:
    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "250 OK"


def make_protocol(handler: DiscardHandler) -> SMTP:
    return SMTP(
        handler,
        data_size_limit=DATA_SIZE_LIMIT,
        enable_SMTPUTF8=True,
        decode_data=False,
        hostname=HOSTNAME,
        loop=asyncio.get_running_loop(),
    )


async def serve(host: str, port: int) -> None:
    handler = DiscardHandler()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: make_protocol(handler), host, port)
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    server.close()
    await server.wait_closed()


def parse_args(argv: list[str] | None = None) -> Any:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
