"""Command line: `riskd run | check-config` (interfaces.md). Exit 0 ok, 2 bad input, 1 bug."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from riskd import __version__
from riskd.config import ConfigError, Settings, describe_source, load_settings, masked
from riskd.markets import MarketsError
from riskd.secrets import mask_urls, url_secrets
from riskd.tape import TapeError

if TYPE_CHECKING:
    from riskd.backtest.fund import Fund

USER_ERRORS = (ConfigError, MarketsError, TapeError)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="riskd", description=__doc__)
    parser.add_argument("--version", action="version", version=f"riskd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("-c", "--config", type=Path, help="config file (default config/riskd.toml)")
    check = sub.add_parser("check-config", help="validate a config and print it, secrets masked")
    check.add_argument("-c", "--config", type=Path)
    _backtest_parser(sub)
    cal = _tape_set_parser(
        sub,
        "calibrate",
        "margin backtest: exceedances of riskd's "
        "margins (Kupiec, Christoffersen) per tape set and regime",
        "write a PNG of the rates",
    )
    cal.add_argument("--markets", type=Path, help="markets file (default: beside each tape)")
    _tape_set_parser(
        sub,
        "frontier",
        "each policy family swept along its knob: lender P&L "
        "against leverage offered, per tape set",
        "write a PNG of LP P&L against leverage offered",
    )
    ex = sub.add_parser("explain", help="why a market has its current parameters")
    ex.add_argument("market")
    ex.add_argument("--url", help="the daemon's API (default: [server] host and port of -c)")
    ex.add_argument("-c", "--config", type=Path)
    ex.add_argument("--json", action="store_true", help="print the JSON document")
    rc = sub.add_parser("receiver", help="run the reference exchange receiver")
    from riskd.receiver import add_arguments

    add_arguments(rc)
    rc.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")
    return parser


def _backtest_parser(sub: Any) -> None:
    bt = sub.add_parser("backtest", help="compare leverage policies on a tape or a directory")
    bt.add_argument("tape", type=Path, help="tape file (CSV/JSONL, .gz) or directory of tapes")
    bt.add_argument("--markets", type=Path, help="markets file (default: beside the tape)")
    bt.add_argument("-c", "--config", type=Path)
    bt.add_argument("--json", action="store_true", help="print the JSON report")
    bt.add_argument("--plot", type=Path, metavar="OUT.png", help="write a PNG of the first market")
    bt.add_argument(
        "--settle",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="settle at the outcome at resolution (default: when outcomes are known)",
    )
    bt.add_argument(
        "--insurance-fund",
        type=_non_negative,
        metavar="X",
        help="pay every policy's bad debt from a fund of X (the traders' "
        "collateral's units), riskd's openings capped by its OI caps; tiers "
        "and group shares from [insurance]",
    )
    bt.add_argument(
        "--group-share",
        type=_share,
        metavar="S",
        help="with --insurance-fund: every group's share of the fund "
        "(default [insurance] group_share and group_shares)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args.config)
        if args.command == "backtest":
            return _backtest(args)
        if args.command == "calibrate":
            return _calibrate(args)
        if args.command == "frontier":
            return _frontier(args)
        if args.command == "check-config":
            settings = load_settings(args.config)
            # stderr: stdout stays one JSON document.
            print(f"riskd: {describe_source(settings)}", file=sys.stderr)
            print(json.dumps(masked(settings), indent=2))
            return 0
        if args.command == "explain":
            return _explain(args)
        if args.command == "receiver":
            return _receiver(args)
    except USER_ERRORS as exc:
        print(f"riskd: {mask_urls(str(exc))}", file=sys.stderr)
        return 2
    return 1


def _backtest(args: argparse.Namespace) -> int:
    from riskd.backtest import runner
    from riskd.jit import configure_cache

    configure_cache()
    settings = _settings(args)
    if not args.tape.exists():
        raise TapeError(f"{args.tape}: no such tape file or directory")
    settle = args.settle
    if settle is None:
        settle = (args.markets or runner.find_markets_file(args.tape)) is not None
    fund = _fund(args, settings)
    results, sim, elapsed = runner.run(
        args.tape, settings, args.markets, settle=settle, record=args.plot is not None, fund=fund
    )
    for r in results:
        for report in r.reports:
            if report.rejected or not report.accepted:
                print(report.summary(), file=sys.stderr)
    if args.json:
        docs = [r.as_dict() for r in results]
        if len(docs) == 1:
            doc = docs[0]
        else:
            total = {k: v.as_dict() for k, v in runner.totals(results).items()}
            doc = {"tapes": docs, "totals": {"policies": total}}
        if fund is not None:
            doc["fund"] = runner.fund_dict(sim)
        print(json.dumps(doc, indent=2))
    else:
        print(runner.table(results))
        if fund is not None:
            print(
                f"\ninsurance fund {fund.balance:g}, socialisation threshold "
                f"{fund.threshold:g}, nights from 12:00 UTC\n{runner.fund_table(sim)}"
            )
        rows = sum(r.ticks for r in results)
        print(
            f"\n{rows} rows, {len(sim.ids)} markets, simulated in {elapsed:.2f} s "
            f"({rows / max(elapsed, 1e-9):,.0f} rows/s); settlement "
            f"{'at outcomes' if settle else 'at last prices'}"
        )
    if args.plot is not None:
        from riskd.backtest.plot import plot

        plot(sim, args.plot)
    return 0


def _fund(args: argparse.Namespace, settings: Settings) -> Fund | None:
    if args.insurance_fund is None:
        if args.group_share is not None:
            raise ConfigError("--group-share: needs --insurance-fund")
        return None
    from riskd.backtest.fund import Fund

    return Fund.of(settings, args.insurance_fund, args.group_share)


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0.0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def _share(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text!r}")
    return value


def _tape_set_parser(
    sub: Any, name: str, help_text: str, plot_help: str
) -> argparse.ArgumentParser:
    """The arguments `calibrate` and `frontier` share: tape sets, the ensemble, output."""
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text)
    parser.add_argument(
        "tapes", type=Path, nargs="*", help="tape files or directories, one set each"
    )
    parser.add_argument(
        "--synthetic", type=int, metavar="N", help="also the seeded ensemble of N simulated markets"
    )
    parser.add_argument("--seed", type=int, default=7, help="the ensemble's seed (default 7)")
    parser.add_argument("-c", "--config", type=Path)
    parser.add_argument("--json", action="store_true", help="print the JSON report")
    parser.add_argument("--plot", type=Path, metavar="OUT.png", help=plot_help)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    """The settings a command runs on, saying on stderr which file they came from (the
    same backtest on another file, or on the built-in defaults, gives other figures)."""
    settings = load_settings(args.config)
    print(f"riskd: {describe_source(settings)}", file=sys.stderr)
    return settings


def _tape_sets(args: argparse.Namespace, command: str) -> Settings:
    """The checks `calibrate` and `frontier` share on their tape sets; their settings."""
    if not args.tapes and args.synthetic is None:
        raise TapeError(f"{command}: no tape given (TAPES, or --synthetic N)")
    if args.synthetic is not None and args.synthetic < 1:
        raise TapeError(f"{command}: --synthetic needs at least 1 market")
    for tape in args.tapes:
        if not tape.exists():
            raise TapeError(f"{tape}: no such tape file or directory")
    return _settings(args)


def _calibrate(args: argparse.Namespace) -> int:
    from riskd.backtest import calibrate
    from riskd.jit import configure_cache

    configure_cache()
    if args.markets is not None and len(args.tapes) > 1:
        raise MarketsError("calibrate: --markets goes with a single tape")
    settings = _tape_sets(args, "calibrate")
    results = [calibrate.calibrate_path(tape, settings, args.markets) for tape in args.tapes]
    if args.synthetic is not None:
        results.append(calibrate.calibrate_synthetic(args.synthetic, settings, args.seed))
    if args.json:
        print(json.dumps(calibrate.as_json(results, settings), indent=2))
    else:
        print(calibrate.table(results))
    if args.plot is not None:
        calibrate.plot(results, args.plot)
    return 0


def _frontier(args: argparse.Namespace) -> int:
    from riskd.backtest import frontier
    from riskd.jit import configure_cache

    configure_cache()
    settings = _tape_sets(args, "frontier")
    sets = [frontier.load_set(tape) for tape in args.tapes]
    if args.synthetic is not None:
        sets.append(frontier.synthetic_set(args.synthetic, args.seed))
    results = {ts.name: frontier.sweep(ts, settings) for ts in sets}
    if args.json:
        print(json.dumps(frontier.as_json(results, settings), indent=2))
    else:
        print(frontier.table(results))
        print()
        print("\n".join(frontier.dominance_lines(results)))
        print(
            f"\nriskd's defaults: {frontier.defaults(settings)}; the most leverage with "
            f"LP P&L >= 0 on every tape (both trader models): {frontier.select(results)}"
        )
    if args.plot is not None:
        frontier.plot(results, args.plot, default=frontier.defaults(settings))
    return 0


def _run(config: Path | None) -> int:
    from riskd import logs
    from riskd.app import Daemon

    settings = load_settings(config)
    logs.setup(settings.log.level, settings.log.format, secret_values(settings))
    # Which file is in force is the first thing to know when the daemon misbehaves;
    # running on built-in defaults is rarely what was meant, so it is a warning.
    source = settings.source
    logging.getLogger("riskd").log(
        logging.INFO if source is not None else logging.WARNING,
        "%s",
        describe_source(settings),
        extra={"config": str(source.resolve()) if source else ""},
    )

    async def go() -> int:
        daemon = Daemon(settings, config)
        # The markets, their bindings and arrays live as long as the process: out of
        # the collector's way (a full collection no longer walks them).
        gc.freeze()
        return await daemon.run()

    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(go())


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed (`pip install riskd[fast]`), else
    asyncio's own."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _explain(args: argparse.Namespace) -> int:
    import urllib.error
    import urllib.parse
    import urllib.request

    from riskd.explain import format_text

    url = args.url
    if url is None:
        server = _settings(args).server
        host = "127.0.0.1" if server.host in ("0.0.0.0", "::", "") else server.host
        url = f"http://{host}:{server.port}"
    target = f"{url.rstrip('/')}/v1/explain/{urllib.parse.quote(args.market, safe='')}"
    try:
        with urllib.request.urlopen(target, timeout=10) as resp:
            doc = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            detail = json.loads(exc.read()).get("error", exc.reason)
        except ValueError:
            detail = exc.reason
        print(f"riskd: {target}: {exc.code} {detail}", file=sys.stderr)
        return 2 if exc.code == 404 else 1
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"riskd: cannot reach the daemon at {url}: {reason}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        sys.stdout.write(format_text(doc))
    return 0


def _receiver(args: argparse.Namespace) -> int:
    from riskd import logs
    from riskd.receiver import ReceiverError, config_from_args, serve

    try:
        cfg = config_from_args(args)
    except ReceiverError as exc:
        print(f"riskd: {exc}", file=sys.stderr)
        return 2
    secrets = [cfg.secret] + ([cfg.report.secret] if cfg.report is not None else [])
    logs.setup(args.log_level, "text", [s.decode(errors="replace") for s in secrets])
    try:
        return asyncio.run(serve(cfg, args.host, args.port, args.path))
    except ReceiverError as exc:
        print(f"riskd: {exc}", file=sys.stderr)
        return 2


def secret_values(settings: Settings) -> list[str]:
    """Every configured secret, for the log filter to mask wherever it appears."""
    values = [
        settings.server.admin_token.get_secret_value(),
        settings.exchange.secret.get_secret_value(),
    ]
    if settings.publisher.websocket is not None:
        values.append(settings.publisher.websocket.token.get_secret_value())
    http = settings.publisher.http
    if http is not None:
        values.append(http.secret.get_secret_value())
        if http.secret_file is not None:
            values.append(http.secret_bytes().decode(errors="replace"))
    # Where a credential inside a URL shows up outside one. Very short ones are left to
    # the URL masking: masking "pw" by value would garble every word holding it.
    values += [v for v in _url_secrets(settings.model_dump()) if len(v) >= 4]
    return [v for v in values if v]


def _url_secrets(node: object) -> list[str]:
    """Credentials inside any URL of the settings (feed URLs, the exchange's URL)."""
    if isinstance(node, dict):
        return [s for v in node.values() for s in _url_secrets(v)]
    if isinstance(node, list):
        return [s for v in node for s in _url_secrets(v)]
    return url_secrets(node) if isinstance(node, str) else []


if __name__ == "__main__":
    sys.exit(main())
