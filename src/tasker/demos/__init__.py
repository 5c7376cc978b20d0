"""The stories' runnable demos, shipped inside the `tasker` package.

They live here rather than in a top-level `examples` package so that installing `tasker-engine`
adds no import name but `tasker`: a user's own `examples/` package is never shadowed, and
`tasker demo ...` works from any directory. One subpackage per story, each with its YAML
templates (package data), step handlers and simulated services:

- `ecommerce`: the Black Friday checkout (`tasker demo black-friday`);
- `microservices`: the user registration across four HTTP services
  (`tasker demo registration-outage`);
- `data_pipeline`: the customer analytics pipeline (`python -m tasker.demos.data_pipeline`);
- `team_scaling`: two teams' refund workflows in namespaces and versions
  (`python -m tasker.demos.team_scaling`);
- `observability`: business metrics and alert subscribers on the checkout
  (`python -m tasker.demos.observability`).

Nothing in `tasker` imports them; they are loaded when a demo runs.
"""
