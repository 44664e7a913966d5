"""Ticks from a NATS subject, for exchanges whose market data is already on NATS."""
