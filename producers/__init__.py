"""Producing workflow events: the async client library, `wks emit` and the load generator."""

from producers.client import Producer, Tracker

__all__ = ["Producer", "Tracker"]
