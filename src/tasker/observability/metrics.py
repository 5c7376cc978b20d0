"""Prometheus metrics.

PLACEHOLDER: the observability work replaces this module; the signatures below are the contract.
"""

from __future__ import annotations


def observe_api_call(system: str, method: str, status: str, seconds: float) -> None:
    """Record one outgoing service call made by an `ApiStepHandler` (status: HTTP code or error kind)."""
