"""Task templates: YAML workflow definitions, their validation and their step graph."""

from tasker.templates.loader import load_file, load_path, parse_template
from tasker.templates.model import CustomEvent, RetrySettings, StepTemplate, TaskTemplate

__all__ = [
    "CustomEvent",
    "RetrySettings",
    "StepTemplate",
    "TaskTemplate",
    "load_file",
    "load_path",
    "parse_template",
]
