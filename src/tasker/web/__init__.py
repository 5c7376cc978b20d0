"""The web dashboard: server-rendered pages over the `Tasker` engine, mounted at "/".

It is a delivery layer like the CLI and the API (docs/architecture.md, "Layers"): it calls the
engine and holds no SQL. `tasker.web.router.install_dashboard` mounts it; this package imports
nothing at import time so that `tasker.api.auth` can use `tasker.web.session` without a cycle.
"""
