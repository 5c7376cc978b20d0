"""OpenTelemetry spans for tasks and steps (optional extra `otel`; a no-op when it is not installed).

PLACEHOLDER: the observability work replaces this module; the signatures below are the contract.
"""

from __future__ import annotations


def inject_headers(headers: dict[str, str]) -> None:
    """Add the current trace context (`traceparent`, `tracestate`) to outgoing HTTP headers, if tracing is on."""
