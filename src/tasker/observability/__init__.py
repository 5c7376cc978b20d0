"""Logs, metrics and traces, attached to workers as hooks (`tasker.domain.hooks`,
`observability.hooks.default_hooks`): the engine never imports this package's modules."""
