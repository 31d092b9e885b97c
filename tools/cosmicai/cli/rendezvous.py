"""`cosmicai rendezvous serve|check`: run the TCPunch rendezvous server, or probe one."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from cosmicai.logs import configure as configure_logs
from cosmicai.rendezvous.probe import EXIT_CODES, check
from cosmicai.rendezvous.protocol import PROTOCOLS
from cosmicai.rendezvous.server import DEFAULT_PORT, serve_forever

_CHECK_EPILOG = f"""\
exit codes:
  0  the two probe clients were paired and told each other's address
  {EXIT_CODES["unreachable"]}  unreachable: refused, unknown host, no route, or no accept in time
  {EXIT_CODES["timeout"]}  timed out: connected, but no pairing within --timeout
  {EXIT_CODES["protocol"]}  protocol error: the server's reply is not valid for --protocol
  2  bad arguments
"""


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not HOST:PORT (for example 10.0.1.5:10000 or localhost:10000)"
        )
    return host, int(port)


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number 0-65535 (0: any free)")
    return int(text)


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value <= 86_400:  # also refuses inf and nan
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of seconds above 0 and at most 86400 (a day)"
        )
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "rendezvous",
        help="run or check the TCPunch rendezvous server used by FMI",
        description="Run the TCPunch-compatible rendezvous server, or probe one end to end.",
    )
    commands = parser.add_subparsers(dest="rendezvous_command", metavar="ACTION", required=True)

    serve = commands.add_parser(
        "serve",
        help="run the rendezvous server until SIGINT/SIGTERM",
        description="Run the rendezvous server. Logs one JSON object per line on stderr.",
    )
    serve.add_argument("--host", default="0.0.0.0", help="address to bind (default 0.0.0.0)")
    serve.add_argument("--port", type=_port, default=DEFAULT_PORT, help="TCP port (default 10000)")
    serve.add_argument("--protocol", choices=PROTOCOLS, default="legacy", help="wire protocol")
    serve.add_argument(
        "--health-port",
        type=_port,
        default=None,
        help="serve GET /livez, /readyz and /health here (default: off)",
    )
    serve.add_argument(
        "--ttl", type=_positive, default=60.0, help="seconds an unpaired entry waits (default 60)"
    )
    serve.add_argument("--max-pending", type=_count, default=10_000, help="unpaired entries cap")
    serve.add_argument(
        "--max-connections",
        type=_count,
        default=None,
        help="open connections cap, health ones included (default: from the fd limit)",
    )
    serve.add_argument(
        "--read-timeout", type=_positive, default=5.0, help="seconds to receive a request"
    )
    serve.set_defaults(func=_serve)

    probe = commands.add_parser(
        "check",
        help="pair two probe clients through a rendezvous server",
        description="Pair two probe clients through HOST:PORT under a random name and report "
        "the time taken and the addresses the server saw.",
        epilog=_CHECK_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    probe.add_argument("address", type=_host_port, metavar="HOST:PORT")
    probe.add_argument("--protocol", choices=PROTOCOLS, default="legacy", help="wire protocol")
    probe.add_argument(
        "--timeout", type=_positive, default=5.0, help="seconds for the whole probe (default 5)"
    )
    probe.add_argument("--json", action="store_true", help="print the result as JSON")
    probe.set_defaults(func=_check)


def _serve(args: argparse.Namespace) -> int:
    if not logging.getLogger().handlers:
        configure_logs()  # JSON lines on stderr
    serve_forever(
        host=args.host,
        port=args.port,
        protocol=args.protocol,
        health_port=args.health_port,
        ttl_s=args.ttl,
        max_pending=args.max_pending,
        max_connections=args.max_connections,
        read_timeout_s=args.read_timeout,
    )
    return 0


def _check(args: argparse.Namespace) -> int:
    host, port = args.address
    result = check(host, port, protocol=args.protocol, timeout_s=args.timeout)
    if args.json:
        print(json.dumps(result.to_dict()))
    elif result.ok:
        print(
            f"ok: paired through {host}:{port} ({result.protocol}) in {result.rtt_ms:.1f} ms; "
            f"client A seen as {result.client_a}, client B as {result.client_b}"
        )
    if not result.ok:
        print(f"error ({result.error_kind}): {result.error}", file=sys.stderr)
    return result.exit_code
