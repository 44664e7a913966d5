"""Live feed configuration: `[feed] kind`, the venue sections, credentials (never shown),
and how markets are bound to feeds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from riskd.app import make_feeds
from riskd.config import ConfigError, Settings, load_settings, masked
from riskd.feeds.kalshi.feed import KalshiFeed
from riskd.feeds.polymarket.feed import PolymarketFeed
from riskd.markets import Market
from tests.support import private_key_pem, to_toml

RESOLVES = 1.9e9


def load(tmp_path: Path, doc: dict[str, Any]) -> Settings:
    path = tmp_path / "riskd.toml"
    path.write_text(to_toml(doc), encoding="utf-8")
    return load_settings(path)


def error(tmp_path: Path, doc: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, doc)
    return str(err.value)


@pytest.fixture(scope="module")
def pem() -> bytes:
    return private_key_pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))


def test_kalshi_needs_its_credentials(tmp_path: Path) -> None:
    msg = error(tmp_path, {"feed": {"kind": "kalshi"}})
    assert "feed.kalshi.key_id" in msg and "feed.kalshi.private_key_path" in msg
    msg = error(
        tmp_path,
        {
            "feed": {
                "kind": "kalshi",
                "kalshi": {"key_id": "k", "private_key_path": str(tmp_path / "missing.pem")},
            }
        },
    )
    assert "feed.kalshi.private_key_path" in msg and "missing.pem" in msg


def test_kinds_unknown_keys_and_urls(tmp_path: Path) -> None:
    s = load(tmp_path, {"feed": {"kind": ["polymarket", "websocket"]}})
    assert s.feed.kinds() == ["polymarket", "websocket"]
    assert "feed.kind" in error(tmp_path, {"feed": {"kind": ["polymarket", "polymarket"]}})
    assert "feed.kind" in error(tmp_path, {"feed": {"kind": ["replay", "polymarket"]}})
    assert "feed.url" in error(
        tmp_path, {"feed": {"kind": ["polymarket", "websocket"], "url": "ws://127.0.0.1:1/"}}
    )
    msg = error(tmp_path, {"feed": {"kind": "polymarket", "polymarket": {"pingg": 3}}})
    assert "feed.polymarket.pingg" in msg and "unknown key" in msg
    msg = error(
        tmp_path,
        {
            "feed": {
                "kind": "polymarket",
                "polymarket": {"backoff_initial_s": 5.0, "backoff_max_s": 1.0},
            }
        },
    )
    assert "feed.polymarket" in msg and "backoff_max_s" in msg
    msg = error(
        tmp_path,
        {"feed": {"kind": "websocket", "websocket": {"fields": {"price": "", "bid": "b"}}}},
    )
    assert "feed.websocket" in msg


def test_the_private_key_from_the_environment_is_never_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pem: bytes
) -> None:
    monkeypatch.setenv("RISKD_FEED__KALSHI__PRIVATE_KEY", pem.decode())
    monkeypatch.setenv("RISKD_FEED__KALSHI__KEY_ID", "key-1")
    s = load(tmp_path, {"feed": {"kind": "kalshi"}})
    assert s.feed.kalshi.private_key_pem() == pem
    shown = json.dumps(masked(s))
    assert "PRIVATE KEY" not in shown and "PRIVATE KEY" not in repr(s)
    assert masked(s)["feed"]["kalshi"]["private_key"] == "***"


def market(mid: str, **ids: str) -> Market:
    return Market(id=mid, resolves_at=RESOLVES, event_at=RESOLVES, **ids)  # type: ignore[arg-type]


def test_each_market_is_bound_to_one_feed(tmp_path: Path, pem: bytes) -> None:
    key = tmp_path / "k.pem"
    key.write_bytes(pem)
    s = load(
        tmp_path,
        {
            "feed": {
                "kind": ["polymarket", "kalshi"],
                "kalshi": {"key_id": "k", "private_key_path": str(key)},
            }
        },
    )
    markets = {
        "both": market("both", polymarket_yes_token="1", kalshi_ticker="KX-BOTH"),
        "poly": market("poly", polymarket_no_token="2"),
        "kal": market("kal", kalshi_ticker="KX-KAL"),
        "none": market("none"),
    }
    pm, kal = make_feeds(s, markets=markets)
    assert isinstance(pm, PolymarketFeed) and isinstance(kal, KalshiFeed)
    assert set(pm.markets) == {"both", "poly"}  # the first kind listed gets "both"
    assert set(kal.markets) == {"kal"}
    assert set(kal.codec.tickers) == {"KX-KAL"}

    s = load(tmp_path, {"feed": {"kind": "polymarket", "markets": ["poly", "nope"]}})
    with pytest.raises(ConfigError, match="feed.markets: .*nope"):
        make_feeds(s, markets=markets)
    s = load(tmp_path, {"feed": {"kind": "polymarket", "markets": ["poly"]}})
    (only,) = make_feeds(s, markets=markets)
    assert isinstance(only, PolymarketFeed) and set(only.markets) == {"poly"}
    s = load(tmp_path, {"feed": {"kind": "polymarket"}})
    with pytest.raises(ConfigError, match="no market to follow"):
        make_feeds(s, markets={"kal": markets["kal"]})


def test_an_unusable_private_key_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = tmp_path / "k.pem"
    key.write_text("-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n")
    msg = error(
        tmp_path,
        {"feed": {"kind": "kalshi", "kalshi": {"key_id": "k", "private_key_path": str(key)}}},
    )
    assert "feed.kalshi" in msg and "private_key_path: not an unencrypted PEM" in msg
    assert "c2VjcmV0" not in msg
    monkeypatch.setenv("RISKD_FEED__KALSHI__PRIVATE_KEY", "c2VjcmV0")
    msg = error(tmp_path, {"feed": {"kind": "kalshi", "kalshi": {"key_id": "k"}}})
    assert "private_key: not an unencrypted PEM" in msg and "c2VjcmV0" not in msg


def test_the_example_live_configs_load(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, pem: bytes
) -> None:
    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)  # the examples name their markets file relative to the repo
    s = load_settings(root / "config/examples/polymarket.toml")
    assert s.feed.kinds() == ["polymarket"] and s.feed.metadata
    (feed,) = make_feeds(s)
    assert isinstance(feed, PolymarketFeed) and feed.ping_interval_s == 10.0
    key = tmp_path / "k.pem"
    key.write_bytes(pem)
    monkeypatch.setenv("RISKD_FEED__KALSHI__KEY_ID", "key-1")
    monkeypatch.setenv("RISKD_FEED__KALSHI__PRIVATE_KEY_PATH", str(key))
    s = load_settings(root / "config/examples/kalshi.toml")
    (feed,) = make_feeds(s)
    assert isinstance(feed, KalshiFeed) and feed.sign_path == "/trade-api/ws/v2"
