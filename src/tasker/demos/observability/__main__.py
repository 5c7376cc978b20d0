"""`python -m tasker.demos.observability [--orders N] [--seed S]`: the monitoring demo."""

from tasker.demos.observability.demo import main

raise SystemExit(main())
