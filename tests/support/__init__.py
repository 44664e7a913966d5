"""What the tests and the scripts share: the daemon under test, the exchange, the
venues, the monitoring stack (tests.support.promstack) and waiting on conditions.

Everything is real: the daemon runs as a subprocess (or in-process on the test's
loop), the exchange is an aiohttp server on 127.0.0.1 that verifies signatures the
way interfaces.md specifies, the venues are websockets servers replaying recorded
messages, and the daemon is observed through its API, /metrics, the audit log and
what the exchange got, never through its log text.
"""

from tests.support.checks import (
    MODES,
    SIDES,
    assert_complete_batch,
    assert_complete_entry,
    assert_versions_increase,
    entries_by_market,
    last_versions,
    metric_families,
    metric_samples,
    parse_time,
    read_audit,
    sample,
)
from tests.support.client import get_blocking, http_get, http_json
from tests.support.config import (
    FED_CSV,
    FED_MARKETS,
    FED_TAPE,
    INSTANCE,
    MIDTERMS,
    REPO,
    SECRET,
    TAPES,
    base_config,
    clean_env,
    free_port,
    merge,
    tape_rows,
    to_toml,
    write_config,
)
from tests.support.daemon import DaemonProcess, InProcessDaemon, Riskd
from tests.support.exchange import (
    MAX_SKEW_S,
    Received,
    Receiver,
    ReceiverThread,
    Step,
    check_delivery,
)
from tests.support.venues import (
    KalshiServer,
    PolymarketServer,
    RestServer,
    VenueServer,
    fixture_docs,
    now_ms,
    private_key_pem,
)
from tests.support.waiting import until, wait_for, wait_until

__all__ = [
    "FED_CSV",
    "FED_MARKETS",
    "FED_TAPE",
    "INSTANCE",
    "MAX_SKEW_S",
    "MIDTERMS",
    "MODES",
    "REPO",
    "SECRET",
    "SIDES",
    "TAPES",
    "DaemonProcess",
    "InProcessDaemon",
    "KalshiServer",
    "PolymarketServer",
    "Received",
    "Receiver",
    "ReceiverThread",
    "RestServer",
    "Riskd",
    "Step",
    "VenueServer",
    "assert_complete_batch",
    "assert_complete_entry",
    "assert_versions_increase",
    "base_config",
    "check_delivery",
    "clean_env",
    "entries_by_market",
    "fixture_docs",
    "free_port",
    "get_blocking",
    "http_get",
    "http_json",
    "last_versions",
    "merge",
    "metric_families",
    "metric_samples",
    "now_ms",
    "parse_time",
    "private_key_pem",
    "read_audit",
    "sample",
    "tape_rows",
    "to_toml",
    "until",
    "wait_for",
    "wait_until",
    "write_config",
]
