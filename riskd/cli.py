"""Command line: `riskd run | check-config` (interfaces.md). Exit 0 ok, 2 bad input, 1 bug."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from riskd import __version__
from riskd.config import ConfigError, load_settings, masked
from riskd.markets import MarketsError
from riskd.tape import TapeError

USER_ERRORS = (ConfigError, MarketsError, TapeError)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="riskd", description=__doc__)
    parser.add_argument("--version", action="version", version=f"riskd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("-c", "--config", type=Path, help="config file (default config/riskd.toml)")
    check = sub.add_parser("check-config", help="validate a config and print it, secrets masked")
    check.add_argument("-c", "--config", type=Path)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args.config)
        if args.command == "check-config":
            settings = load_settings(args.config)
            print(json.dumps(masked(settings), indent=2))
            return 0
    except USER_ERRORS as exc:
        print(f"riskd: {exc}", file=sys.stderr)
        return 2
    return 1


def _run(config: Path | None) -> int:
    from riskd import logs
    from riskd.app import Daemon

    settings = load_settings(config)
    logs.setup(settings.log.level, settings.log.format)

    async def go() -> int:
        daemon = Daemon(settings, config)
        return await daemon.run()

    return asyncio.run(go())


if __name__ == "__main__":
    sys.exit(main())
