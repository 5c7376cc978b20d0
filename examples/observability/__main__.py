"""`python -m examples.observability [--orders N] [--seed S]`: the monitoring demo."""

from examples.observability.demo import main

raise SystemExit(main())
