"""The engine: `Tasker` (`tasker.engine.tasker`), its parts, and the worker that runs steps.

`Tasker` holds the core verbs; its parts are one small class per module, each holding the store,
bus or registry it needs: `templates`, `systems`, `insight`, `queries` (`engine.listing`),
`history` and `keys`. The worker's modules (`worker`, `executor`, `cycle`, ...) run the steps.
"""
