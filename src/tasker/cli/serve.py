"""`tasker serve`: the command line of the API server; the server itself lives in
`tasker.cli.serving`."""

from __future__ import annotations

import click

from tasker.cli.common import templates_option


@click.command()
@click.option("--host", default=None, help="Interface to listen on. Default: api_host (127.0.0.1).")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Port to listen on (0 picks a free one). Default: api_port (8000).",
)
@templates_option
@click.option(
    "--workers",
    type=click.IntRange(0, 64),
    default=0,
    show_default=True,
    help=(
        "In-process workers that run steps alongside the API, restarted with backoff "
        "if they die (0: serve only)."
    ),
)
@click.option(
    "--concurrency",
    "-c",
    type=click.IntRange(1, 4096),
    default=None,
    help="Steps each in-process worker runs at the same time. Default: concurrency setting.",
)
@click.pass_context
def serve(
    ctx: click.Context,
    host: str | None,
    port: int | None,
    templates: tuple[str, ...],
    workers: int,
    concurrency: int | None,
) -> None:
    """Serve the REST API (under /api/v1, docs at /docs) and optionally run workers."""
    from tasker.cli.serving import serve_api  # FastAPI and uvicorn load only when serving

    serve_api(ctx, host, port, templates, None, workers, concurrency)
