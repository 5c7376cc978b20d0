"""The REST API (FastAPI): a delivery layer over the `Tasker` engine object."""
