"""One configuration root: TOML file < environment (RISKD_<SECTION>__<KEY>) < init.

Unknown keys, wrong types and impossible values are errors naming the key.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from riskd.feeds.kalshi.config import KalshiSettings
from riskd.feeds.nats.config import NatsFeedSettings
from riskd.feeds.polymarket.config import PolymarketSettings
from riskd.feeds.websocket.config import WebsocketFeedSettings
from riskd.secrets import mask_url
from riskd.validators import KeyValueError, ordered, readable_file

DEFAULT_CONFIG = Path("config/riskd.toml")


class ConfigError(ValueError):
    """A configuration file or environment variable that cannot be used."""


class Section(BaseModel):
    # No inf or nan anywhere: TOML has literals for them, no setting means them.
    # Frozen: a change is a new object (`model_copy(update=...)`, a reload's new
    # Settings), so whoever holds settings sees them whole.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


LiveKind = Literal["polymarket", "kalshi", "websocket", "nats"]


class FeedSettings(Section):
    # One kind, or several live kinds at once (e.g. ["polymarket", "kalshi"]): a
    # market with ids on several venues follows the first kind listed.
    kind: Literal["replay", "polymarket", "kalshi", "websocket", "nats"] | list[LiveKind] = "replay"
    path: Path = Path("data/tapes/polymarket_midterms_2022")
    speed: float = Field(600.0, ge=0.0)
    # Ticks before this time are replayed as fast as possible (estimator warm-up),
    # the rest at `speed`: a demo reaches the interesting part without skipping history.
    fast_forward_until: str | None = None
    exit_at_end: bool = False
    # Live feeds: overrides [feed.<kind>] url when one live kind is configured.
    url: str = ""
    # Live feeds: look markets up on the venue's REST API (resolution times, tokens).
    metadata: bool = True
    # Live feeds: only these market ids of the markets file (empty: every market
    # with the venue's ids).
    markets: list[str] = Field(default_factory=list)
    # Live feeds: a tick stamped further ahead of its arrival (wall time) than this
    # is rejected (`future_ts`), so a venue's clock error cannot make later, honest
    # prices look out of order. A replay's clock is the tape: not checked there.
    max_future_s: float = Field(5.0, gt=0.0)
    polymarket: PolymarketSettings = Field(default_factory=PolymarketSettings)
    kalshi: KalshiSettings = Field(default_factory=KalshiSettings)
    websocket: WebsocketFeedSettings = Field(default_factory=WebsocketFeedSettings)
    nats: NatsFeedSettings = Field(default_factory=NatsFeedSettings)

    def kinds(self) -> list[str]:
        return [self.kind] if isinstance(self.kind, str) else list(self.kind)

    @model_validator(mode="after")
    def _live(self) -> FeedSettings:
        kinds = self.kinds()
        if not kinds:
            raise ValueError("feed.kind: name at least one feed")
        if len(set(kinds)) != len(kinds):
            raise ValueError("feed.kind: a kind is listed twice")
        if len(kinds) > 1 and self.url:
            raise ValueError(
                "feed.url: ambiguous with several kinds; set [feed.<kind>] url instead"
            )
        if "kalshi" in kinds and (missing := self.kalshi.missing_credentials()):
            raise ValueError("feed.kind = kalshi needs " + " and ".join(missing))
        return self


class MarketsSettings(Section):
    file: Path | None = Path("data/tapes/polymarket_midterms_2022/markets.json")
    # Inline market tables, same keys as the markets file; the file wins on conflicts.
    inline: list[dict[str, Any]] = Field(default_factory=list)
    # Track markets the feed sends that are not listed (unknown resolution time,
    # flagged). Off: such ticks are counted as rejected and dropped.
    discover: bool = False
    # At most this many markets are discovered; ticks of further new ids are counted
    # (`discover_limit`) and dropped, so a feed sending endless ids cannot grow memory.
    discover_max: int = Field(10_000, ge=0)


class ModelSettings(Section):
    """Spec model.md sections 2-4; the defaults are the spec's."""

    confidence: float = Field(0.99, gt=0.5, lt=1.0)
    liquidation_horizon_s: float = Field(300.0, gt=0.0)
    k_liquidity: float = Field(3.0, ge=0.0)
    # Liquidity from the book (docs/model.md section 4): the reference position, in
    # quote currency, that a liquidation must unwind through the depth within
    # max_slippage of the mid (per market: `liquidation_notional` in the markets
    # file), and the time the book takes to rebuild that depth once taken.
    liquidation_notional: float = Field(10_000.0, gt=0.0)
    book_refill_s: float = Field(300.0, ge=0.0)
    default_tau_s: float = Field(2_592_000.0, gt=0.0)
    # A scheduled event (the markets file gives `event_at`) strikes a position only
    # once it lies within h; before that, early decisive news does (a withdrawal, a
    # leak): at this base rate per second, plus this share of the uniform hazard
    # 1 / tau (1: the rule of a market without a date). docs/model.md section 4.
    early_news_rate: float = Field(1.0 / (365 * 86_400.0), ge=0.0)
    early_news_share: float = Field(0.05, ge=0.0, le=1.0)
    h_min_s: float = Field(60.0, gt=0.0)
    eps: float = Field(1e-4, gt=0.0, lt=0.01)
    dt_min_s: float = Field(1.0, gt=0.0)
    k_jump: float = Field(4.0, gt=0.0)
    jump_min_move: float = Field(0.03, ge=0.0, lt=1.0)
    sigma_halflife_s: float = Field(86_400.0, gt=0.0)
    # Short: a jump says "this market is moving now" (jumps cluster on news nights);
    # the long-run rate is lambda_prior.
    jump_halflife_s: float = Field(3_600.0, gt=0.0)
    noise_halflife_ticks: float = Field(20.0, gt=0.0)
    gap_halflife_ticks: float = Field(10.0, gt=0.0)
    # Logit units per sqrt(second): 2e-4 is ~0.06 logit per day, a calm market.
    sigma_prior: float = Field(2e-4, gt=0.0)
    sigma_floor: float = Field(5e-5, gt=0.0)
    # One surprise per 30 days until the markets show their own rate: the prior of the
    # pooled rate of all markets, with the strength of jump_pool_prior_s of market-time;
    # each market's long-run rate is shrunk toward that pool with the strength of
    # jump_shrinkage_s of its own time (docs/model.md section 3).
    lambda_prior: float = Field(1.0 / (30 * 86_400.0), ge=0.0)
    jump_pool_prior_s: float = Field(30 * 86_400.0, gt=0.0)
    jump_shrinkage_s: float = Field(7 * 86_400.0, gt=0.0)
    # A jump moves the logit by at least 1 (0.5 -> 0.73): the size of the news moves
    # on the shipped tapes (Fed: 0.65 -> 0.40 in 30 minutes; election nights: 1-2).
    J_floor: float = Field(1.0, gt=0.0)
    jump_size_weight: float = Field(0.3, gt=0.0, le=1.0)
    maintenance_ratio: float = Field(0.5, gt=0.0, lt=1.0)
    m_floor: float = Field(0.02, gt=0.0, le=1.0)
    fee_loading: float = Field(0.4, ge=0.0)
    z_slip: float = Field(3.0, gt=0.0)
    h_exec_s: float = Field(60.0, gt=0.0)
    nodes: int = Field(12, ge=4, le=64)
    # Where the exchange gives a trader this long to top up before it liquidates, the
    # lender waits through it: added to the liquidation horizon (docs/model.md
    # section 4). 0: liquidation starts at the maintenance margin.
    margin_call_window_s: float = Field(0.0, ge=0.0)
    # After a fresh start every market holds its fail-safe values this long.
    warmup_s: float = Field(60.0, ge=0.0)
    # A market stays at its fail-safe values until it has shown this many prices:
    # two prices say nothing about how often it trades.
    warmup_ticks: int = Field(10, ge=2)

    @model_validator(mode="after")
    def _floors(self) -> ModelSettings:
        # A prior under its floor is never used: the floor replaces it silently.
        ordered(self, "sigma_floor", "sigma_prior")
        return self

    @field_validator("nodes")
    @classmethod
    def _even_nodes(cls, v: int) -> int:
        # An odd rule has a node at z = 0, a zero-loss atom that can sit in the tail.
        if v % 2:
            raise ValueError("must be even")
        return v


class LimitsSettings(Section):
    max_leverage: float = Field(20.0, ge=1.0)
    max_slippage: float = Field(0.05, gt=0.0, lt=1.0)
    fee_floor_hourly: float = Field(1e-5, ge=0.0)


class GovernorSettings(Section):
    publish_interval_s: float = Field(1.0, gt=0.0)
    deadband: float = Field(0.02, ge=0.0, lt=1.0)
    max_loosen_step: float = Field(0.10, gt=0.0)
    loosen_interval_s: float = Field(60.0, gt=0.0)
    jump_cooldown_s: float = Field(600.0, ge=0.0)
    halt_after_jump_s: float = Field(0.0, ge=0.0)
    freeze_before_resolution_s: float = Field(3600.0, ge=0.0)
    stale_after_s: float = Field(30.0, gt=0.0)
    # Markets without a live book (trade tapes, a venue's trades only): stale after
    # the larger of stale_after_s and this many of the market's own mean gaps between
    # prices. Their liquidation horizon already prices sparse trading; a fixed limit
    # would count it twice (docs/model.md section 5). 0: stale_after_s alone.
    stale_after_gaps: float = Field(20.0, ge=0.0)
    ttl_s: float = Field(60.0, gt=0.0)
    # A cycle evaluates the markets that ticked or whose time-driven conditions came due;
    # every other market is still evaluated at least this often (its time to resolution
    # and jump intensity drift without ticks).
    reevaluate_s: float = Field(30.0, gt=0.0)

    @model_validator(mode="after")
    def _ttl_covers_cycle(self) -> GovernorSettings:
        # A set must outlive the cycle that would replace it.
        ordered(self, "publish_interval_s", "ttl_s", strict=True)
        return self


class InsuranceSettings(Section):
    """Tiers that stand behind the lender, and the open-interest caps sized from them
    (docs/model.md section 10). The section absent: no caps (`oi_cap` null)."""

    # First-loss tier, the insurance fund: "exchange", the balance the exchange
    # reports with its open interest; "fixed", `fund_balance` (quote currency).
    fund_source: Literal["exchange", "fixed"] = "exchange"
    fund_balance: float | None = Field(None, ge=0.0)
    # Second tier: below this balance (quote currency) the exchange socialises further
    # losses (deleveraging, a haircut to lenders) instead of paying them from the fund.
    # The caps spend only the fund above it.
    socialisation_threshold: float = Field(0.0, ge=0.0)
    # The share of that fund a group's expected shortfall may take, and per-group
    # overrides by group name. A market without a group is a group of its own with
    # the default share. Shares need not sum to 1: each is a tail of its own group.
    group_share: float = Field(0.1, gt=0.0, le=1.0)
    group_shares: dict[str, float] = Field(default_factory=dict)
    # Margins start to rise at this share of the cap and reach the side's value (1x,
    # nothing more lent) at the cap, smoothly between.
    margin_ramp_start: float = Field(0.5, ge=0.0, lt=1.0)

    @field_validator("group_shares")
    @classmethod
    def _shares(cls, v: dict[str, float]) -> dict[str, float]:
        for name, share in v.items():
            if not 0.0 < share <= 1.0:
                raise ValueError(f"{name!r}: a share must be in (0, 1], got {share:g}")
        return v

    @model_validator(mode="after")
    def _fund(self) -> InsuranceSettings:
        if self.fund_source == "fixed":
            if self.fund_balance is None:
                raise KeyValueError("fund_balance", "required with fund_source = 'fixed'")
            # Else no fund is spendable and every cap is 0.
            ordered(self, "socialisation_threshold", "fund_balance", strict=True)
        elif self.fund_balance is not None:
            raise KeyValueError(
                "fund_balance",
                "used only with fund_source = 'fixed' (the exchange reports the balance)",
            )
        return self

    def share(self, group: str | None) -> float:
        """The share of the spendable fund allotted to a group (None: ungrouped)."""
        return self.group_shares.get(group, self.group_share) if group else self.group_share


class JsonlPublisherSettings(Section):
    path: Path = Path("var/audit.jsonl")
    fsync: bool = False  # fsync after every batch (else flush only: the OS writes it back)
    max_bytes: int = Field(64 * 1024 * 1024, ge=0)  # rotate beyond this; 0 never
    backups: int = Field(5, ge=0)  # rotated files kept


class HttpPublisherSettings(Section):
    url: str
    secret: SecretStr = SecretStr("")
    secret_file: Path | None = None
    timeout_s: float = Field(5.0, gt=0.0)
    # Markets per request; more changed markets go in several requests, tightened first.
    max_batch: int = Field(500, ge=1)
    # Retries: capped exponential backoff with jitter, never sooner than Retry-After
    # (itself capped at retry_after_max_s).
    backoff_initial_s: float = Field(0.1, gt=0.0)
    backoff_max_s: float = Field(10.0, gt=0.0)
    retry_after_max_s: float = Field(60.0, ge=0.0)
    # Circuit breaker: open after this many consecutive retryable failures, probe
    # after circuit_reset_s (doubling up to circuit_max_reset_s while probes fail).
    circuit_failures: int = Field(5, ge=1)
    circuit_reset_s: float = Field(5.0, gt=0.0)
    circuit_max_reset_s: float = Field(60.0, gt=0.0)

    _readable = field_validator("secret_file")(readable_file)

    @model_validator(mode="after")
    def _consistent(self) -> HttpPublisherSettings:
        # backoff() and the breaker need their ranges the right way round; a publisher
        # that only finds out at its first failure would stop sending.
        ordered(self, "backoff_initial_s", "backoff_max_s")
        ordered(self, "circuit_reset_s", "circuit_max_reset_s")
        has_secret = bool(self.secret.get_secret_value().strip())
        if self.secret_file is not None:
            if has_secret:
                raise KeyValueError("secret_file", "set secret or secret_file, not both")
            if not self.secret_bytes():
                raise KeyValueError("secret_file", f"{self.secret_file} is empty")
        elif not has_secret:
            # An empty key signs every batch with it: the exchange refuses them all.
            raise KeyValueError(
                "secret",
                "required to sign requests: set secret, "
                "secret_file or RISKD_PUBLISHER__HTTP__SECRET",
            )
        return self

    def secret_bytes(self) -> bytes:
        if self.secret_file is not None:
            try:
                return self.secret_file.read_bytes().strip()
            except OSError as exc:
                raise ConfigError(
                    f"publisher.http.secret_file: cannot read {self.secret_file}: {exc.strerror}"
                ) from None
        return self.secret.get_secret_value().encode()


class WebsocketPublisherSettings(Section):
    """`/v1/stream` on the daemon's server: a snapshot on connect, then every batch."""

    token: SecretStr = SecretStr("")  # empty: no token needed; else Authorization: Bearer
    # Batches queued for one client; a client that falls further behind is disconnected.
    max_backlog: int = Field(256, ge=1)
    max_clients: int = Field(64, ge=1)


class NatsPublisherSettings(Section):
    """Batches to a NATS subject: JetStream with an ack when `jetstream`, else core NATS."""

    url: str = "nats://127.0.0.1:4222"
    subject: str = Field("riskd.params", min_length=1)
    # The subject must be in a stream; each batch is acknowledged by the server and
    # deduplicated by its Nats-Msg-Id (<instance>:<seq>) when retried.
    jetstream: bool = False
    timeout_s: float = Field(2.0, gt=0.0)
    # Batches waiting to be sent; beyond, the oldest is dropped (counted as an error).
    max_backlog: int = Field(1024, ge=1)


class PublisherSettings(Section):
    instance: str = "riskd-a"
    jsonl: JsonlPublisherSettings | None = Field(default_factory=JsonlPublisherSettings)
    http: HttpPublisherSettings | None = None
    websocket: WebsocketPublisherSettings | None = None
    nats: NatsPublisherSettings | None = None


class ServerSettings(Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8787, ge=0, le=65535)
    admin_token: SecretStr = SecretStr("")
    max_market_series: int = Field(10_000, ge=0)
    # Admin overrides may only tighten relative to the model unless this is true;
    # then an override with "loosen": true replaces the model's leverage target.
    allow_loosen: bool = False
    # Limits of the API server (riskd/server.py). A connection beyond max_connections
    # is answered 503 and closed; one that has not sent a whole request head within
    # header_timeout_s is answered 408 and closed; an idle keep-alive connection is
    # closed after keepalive_timeout_s. Each refusal is counted in
    # riskd_api_refused_total{reason}.
    max_connections: int = Field(256, ge=1)
    header_timeout_s: float = Field(10.0, gt=0.0)
    keepalive_timeout_s: float = Field(30.0, gt=0.0)
    max_line_bytes: int = Field(8190, ge=256)  # request line and each header line
    max_field_bytes: int = Field(8190, ge=256)  # one header's value
    max_headers: int = Field(64, ge=8)
    max_body_bytes: int = Field(1024 * 1024, ge=1024)
    # SIGTERM or SIGINT to exit: the publishers' drain is cut at this deadline; a second
    # signal cuts it at once (exit status 1).
    shutdown_deadline_s: float = Field(4.0, gt=0.0, le=300.0)


class StateSettings(Section):
    enabled: bool = True
    dir: Path = Path("var/state")
    snapshot_interval_s: float = Field(10.0, gt=0.0)
    # An older snapshot is not trusted: the daemon starts at fail-safe values.
    max_age_s: float = Field(300.0, gt=0.0)

    @model_validator(mode="after")
    def _snapshots_usable(self) -> StateSettings:
        # Else a restart mostly finds a snapshot older than max_age_s, and drops it.
        ordered(self, "snapshot_interval_s", "max_age_s", strict=True)
        return self


class ExchangeSettings(Section):
    """What the exchange reports: `POST /v1/exchange/state` (riskd/exchange.py)."""

    # HMAC key of the exchange's requests; empty: the endpoint is disabled (403).
    secret: SecretStr = SecretStr("")
    # X-Riskd-Timestamp may differ from riskd's wall clock by at most this.
    max_skew_s: float = Field(300.0, gt=0.0)
    # Accept only this exchange (the body's `exchange`); None: any.
    instance: str | None = Field(None, min_length=1)
    # Exchange state older than this counts as open interest at its cap (tighten): a
    # silent exchange may have lent up to the cap since (docs/model.md section 10).
    max_age_s: float = Field(60.0, gt=0.0)


class ClusterSettings(Section):
    """`[cluster]`: replicas sharing shard leases on NATS JetStream (docs/scaling.md).
    Absent: one process publishes every market, as without it."""

    nats_url: str = "nats://127.0.0.1:4222"
    # Markets are spread over this many shards by a stable hash of their id.
    shards: int = Field(1, ge=1, le=1024)
    # A shard's lease lapses this long after its leader's last renewal; the leader
    # stops publishing the shard before then.
    lease_ttl_s: float = Field(2.0, ge=0.5, le=60.0)
    # This replica's name in the lease values and the presence bucket; "" is
    # <hostname>-<pid>.
    replica: str = ""
    # JetStream names: the lease and presence buckets, the stream of published batches
    # (one subject per shard: <subject>.<shard>) and how long it keeps them.
    bucket: str = Field("riskd_leases", pattern=r"^[A-Za-z0-9_-]+$")
    stream: str = Field("RISKD_BATCHES", pattern=r"^[A-Za-z0-9_-]+$")
    subject: str = Field("riskd.batches", pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
    history_s: float = Field(3600.0, gt=0.0)


class LogSettings(Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RISKD_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        allow_inf_nan=False,
    )

    feed: FeedSettings = Field(default_factory=FeedSettings)
    markets: MarketsSettings = Field(default_factory=MarketsSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    governor: GovernorSettings = Field(default_factory=GovernorSettings)
    publisher: PublisherSettings = Field(default_factory=PublisherSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    state: StateSettings = Field(default_factory=StateSettings)
    exchange: ExchangeSettings = Field(default_factory=ExchangeSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    insurance: InsuranceSettings | None = None
    cluster: ClusterSettings | None = None

    # The file loaded (None: built-in defaults) and whether -c named it; set by
    # load_settings.
    _source: Path | None = PrivateAttr(None)
    _explicit: bool = PrivateAttr(False)

    @property
    def source(self) -> Path | None:
        """The config file these settings were read from; None for built-in defaults."""
        return self._source

    @model_validator(mode="after")
    def _distinct_paths(self) -> Settings:
        _check_paths(self)
        return self

    @model_validator(mode="after")
    def _history_covers_sets(self) -> Settings:
        # A new leader holds its shard at the sets still in force: the stream must
        # keep every batch whose sets have not expired.
        if self.cluster is not None and self.cluster.history_s <= self.governor.ttl_s:
            raise KeyValueError(
                "cluster.history_s",
                f"must exceed governor.ttl_s ({self.governor.ttl_s:g}): the stream must "
                "hold every set still in force",
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _LOADING.get("path")
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)


def _check_paths(s: Settings) -> None:
    """Files the daemon writes must not be files it reads, nor each other: an audit log
    in the replay's tape directory would be replayed as a tape next time (`.jsonl`),
    state in it likewise (`overrides.json`)."""
    audit = _resolved(s.publisher.jsonl.path) if s.publisher.jsonl is not None else None
    state = _resolved(s.state.dir) if s.state.enabled else None
    tape = _resolved(s.feed.path) if s.feed.kind == "replay" else None
    if audit is not None:
        if tape is not None and audit.is_relative_to(tape):
            what = "is the replay tape" if audit == tape else "is inside the tape directory"
            raise KeyValueError("publisher.jsonl.path", f"{what} feed.path ({s.feed.path})")
        if state is not None and audit == state:
            raise KeyValueError(
                "publisher.jsonl.path", f"is the state directory state.dir ({s.state.dir})"
            )
        if s.markets.file is not None and audit == _resolved(s.markets.file):
            raise KeyValueError(
                "publisher.jsonl.path", f"is the markets file markets.file ({s.markets.file})"
            )
    if state is not None and tape is not None and state == tape:
        raise KeyValueError("state.dir", f"is the replay tape feed.path ({s.feed.path})")


def _resolved(path: Path) -> Path:
    """Symlinks and `..` resolved where the file system allows (a symlink loop, a
    name it refuses: compared as written, the open reports the problem)."""
    try:
        return path.resolve()
    except (OSError, RuntimeError, ValueError):
        return path.absolute()


# pydantic-settings asks the class, not the instance, for its sources: the file
# being loaded is handed over here for the duration of one load_settings call.
_LOADING: dict[str, Path | None] = {}


def load_settings(path: str | Path | None = None, *, required: bool = False) -> Settings:
    """Read the TOML file (if present) with env overrides; raise ConfigError naming the key."""
    toml_path: Path | None = Path(path) if path is not None else DEFAULT_CONFIG
    assert toml_path is not None
    if not toml_path.exists():
        if required or path is not None:
            raise ConfigError(f"{toml_path}: config file not found")
        toml_path = None  # the embedded defaults
    else:
        _check_toml(toml_path)
    _LOADING["path"] = toml_path
    try:
        settings = Settings()
        settings._source = toml_path
        settings._explicit = path is not None
        return settings
    except ValidationError as exc:
        raise ConfigError(_describe(exc, toml_path)) from None
    except SettingsError as exc:  # e.g. an environment variable that is not valid JSON
        raise ConfigError(f"{toml_path or 'environment'}: invalid configuration: {exc}") from None
    finally:
        _LOADING.pop("path", None)


def _check_toml(path: Path) -> None:
    import tomllib

    try:
        with path.open("rb") as fh:
            tomllib.load(fh)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None


def _describe(exc: ValidationError, path: Path | None) -> str:
    where = str(path) if path is not None else "embedded defaults"
    lines = [f"{where}: invalid configuration"]
    for err in exc.errors():
        loc = [str(part) for part in err["loc"]]
        msg = err["msg"]
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, KeyValueError):  # a conflict found by a section: name its key
            loc += cause.key.split(".")
            msg = cause.message
        key = ".".join(loc) or "(root)"
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        env = "RISKD_" + "__".join(p.upper() for p in loc)
        source = f" (or env {env})" if key != "(root)" and env in os.environ else ""
        lines.append(f"  {key}{source}: {msg}")
    return "\n".join(lines)


def describe_source(settings: Settings) -> str:
    """Where the settings came from, for check-config and the daemon's first log line:
    the file (and why that one), and the names (never values) of RISKD_ variables."""
    path = settings.source
    if path is None:
        text = f"no config file (no -c, no ./{DEFAULT_CONFIG}): built-in defaults"
    elif settings._explicit:
        text = f"config file {path.resolve()}"
    else:
        text = f"config file {path.resolve()} (found as ./{DEFAULT_CONFIG}, no -c given)"
    env = sorted(k for k in os.environ if k.upper().startswith("RISKD_"))
    if env:
        text += "; environment overrides: " + ", ".join(env)
    return text


def masked(settings: Settings) -> dict[str, Any]:
    """The effective settings as plain data, every secret replaced by '***' (also the
    credentials inside URLs)."""
    data = _mask_urls(json.loads(settings.model_dump_json()))  # SecretStr: '**********'
    for secret in _secret_paths(settings):
        node: Any = data
        for part in secret[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and node.get(secret[-1]):
            node[secret[-1]] = "***"
    return data


def _mask_urls(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _mask_urls(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_mask_urls(v) for v in node]
    if isinstance(node, str):
        return mask_url(node)
    return node


def _secret_paths(settings: Settings) -> list[tuple[str, ...]]:
    paths: list[tuple[str, ...]] = [
        ("server", "admin_token"),
        ("feed", "kalshi", "private_key"),
        ("exchange", "secret"),
    ]
    if settings.publisher.http is not None:
        paths.append(("publisher", "http", "secret"))
    if settings.publisher.websocket is not None:
        paths.append(("publisher", "websocket", "token"))
    return paths
