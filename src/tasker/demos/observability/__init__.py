"""Event-driven monitoring of the checkout: a business-metrics subscriber and a performance
subscriber.

    from tasker.demos.observability.wiring import attach
    monitoring = attach(engine)                 # both subscribers, slow-step thresholds from the
    template ...
    monitoring.business.snapshot()              # orders, revenue, checkout durations, failure
    reasons

Run `python -m tasker.demos.observability` for a demonstration on a scratch SQLite database.
"""
