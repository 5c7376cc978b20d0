"""The handlers of the checkout of docs/testing.md, with the fakes a test drives them with."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from tasker import RetryableError, StepContext, StepHandler


class Gateway:
    """A fake payment gateway: refuses the first `failures` charges with a timeout."""

    failures = 0
    calls: list[datetime] = []
    charged: dict[str, str] = {}

    @classmethod
    def charge(cls, key: str, at: datetime) -> str:
        cls.calls.append(at)
        if len(cls.calls) <= cls.failures:
            raise RetryableError("payment gateway timed out")
        return cls.charged.setdefault(key, f"ch_{len(cls.charged) + 1}")


class Mailer:
    """A fake mail service: what was sent, and when (the engine's time)."""

    sent: list[tuple[str, datetime]] = []


class Charge(StepHandler):
    def process(self, ctx: StepContext) -> dict[str, Any]:
        assert ctx.now is not None
        return {"charge_id": Gateway.charge(ctx.idempotency_key, ctx.now)}


def next_morning(now: datetime, hour: int = 9) -> datetime:
    morning = now.replace(hour=hour, minute=0, second=0, microsecond=0)
    return morning if morning > now else morning + timedelta(days=1)


class FollowUpNextMorning(StepHandler):
    """Parks until 9 the next morning (holding no worker), then sends the e-mail."""

    def process(self, ctx: StepContext) -> Any:
        assert ctx.now is not None
        if ctx.state is None:
            due = next_morning(ctx.now)
            return ctx.sleep((due - ctx.now).total_seconds(), state={"due": due.isoformat()})
        Mailer.sent.append((ctx.context["email"], ctx.now))
        return {"sent_at": ctx.now.isoformat()}
