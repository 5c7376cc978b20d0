"""The bottom layer: the records, states, errors and policies the whole engine shares.

Nothing here does I/O or imports another part of `tasker`; every other layer may import it. The
state machines (`states`), the failure classification (`failures`), the retry delay (`retry`), the
circuit breaker (`circuits`) and the numeric ranges (`bounds`) are pure functions, so they are
tested without a database, and the store persists their decisions rather than re-deciding in SQL.
"""
