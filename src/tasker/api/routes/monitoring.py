"""PLACEHOLDER: replaced by the work that owns this module; `router` is the contract."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
