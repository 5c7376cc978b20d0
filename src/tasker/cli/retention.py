"""`tasker retention`: the retention in force and what the housekeeping job last did.

The default comes from this command's settings (`retention`, `archive`: the same a worker started
here reads); the templates' own retention and the job's last pass come from the store, whichever
worker holds the job (docs/operations.md, "Retention").
"""

from __future__ import annotations

import click

from tasker.cli.common import echo_json, json_option, state
from tasker.domain.reports import RetentionReport


@click.command()
@json_option
@click.pass_context
def retention(ctx: click.Context, as_json: bool) -> None:
    """The retention in force (default, per template) and the housekeeping job's last pass."""
    st = state(ctx)
    engine = st.engine(load=False, access="read")
    report = engine.retention.report(st.settings.retention, st.settings.archive)
    if as_json:
        echo_json(report.model_dump(mode="json"))
        return
    from tasker.cli.common import console

    for line in lines(report):
        console.print(line, highlight=False, soft_wrap=True)


def _periods(periods: dict[str, str]) -> str:
    return ", ".join(f"{state} {period}" for state, period in periods.items())


def lines(report: RetentionReport) -> list[str]:
    """The report as the lines `tasker retention` prints."""
    out = [
        "default: "
        + (
            _periods(report.default)
            or "none (no task is deleted automatically unless its template says so)"
        ),
        f"archive: {report.archive or 'none'}",
    ]
    if report.templates:
        out.append("templates:")
        out += [f"  {name}: {_periods(p)}" for name, p in report.templates.items()]
    else:
        out.append("templates: none declare their own retention")
    if report.holder is not None and report.lease_until is not None:
        until = f"{report.lease_until:%Y-%m-%d %H:%M:%S}Z"
        out.append(f"housekeeping job: held by {report.holder} until {until}")
    else:
        out.append("housekeeping job: not held (no long-running worker runs it)")
    last = report.last_pass
    if last is None:
        out.append("last pass: none yet")
        return out
    deleted = _periods({s: str(n) for s, n in last.deleted.items()})
    out.append(
        f"last pass: {last.started_at:%Y-%m-%d %H:%M:%S}Z by {last.worker}, {last.seconds:.2f}s:"
        f" deleted {last.total}{f' ({deleted})' if deleted else ''}"
        + (f", archived {last.archived} to {last.archive}" if last.archived else "")
        + f", {last.workers_pruned} worker row(s) pruned"
        + ("" if last.complete else " (stopped early; the next pass goes on)")
    )
    if last.error:
        out.append(f"last pass failed: {last.error}")
    return out
