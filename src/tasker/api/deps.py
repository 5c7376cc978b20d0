"""What route functions receive by dependency injection: the engine and the settings of this
server."""

from __future__ import annotations

from fastapi import Request

from tasker.engine.tasker import Tasker
from tasker.settings import Settings


def get_engine(request: Request) -> Tasker:
    engine: Tasker = request.app.state.tasker
    return engine


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings
