"""Task templates: YAML workflow definitions, their validation and their step graph."""

from tasker.domain.templates import CustomEvent, RetrySettings, StepTemplate, TaskTemplate
from tasker.templates.loader import load_file, load_path, parse_template

__all__ = [
    "CustomEvent",
    "RetrySettings",
    "StepTemplate",
    "TaskTemplate",
    "load_file",
    "load_path",
    "parse_template",
]
