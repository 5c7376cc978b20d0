"""Logs, metrics and traces: fed by the engine, never calling back into it."""
