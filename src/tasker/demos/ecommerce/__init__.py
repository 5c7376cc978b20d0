"""The e-commerce story ("Black Friday Meltdown") as a runnable example.

- `templates/process_order.yaml`: the `ecommerce/process_order@1.0.0` workflow (five steps in a
  chain);
- `handlers.py`: its step handlers; `order_processing.py`: its task handler (context and
  annotations);
- `services.py`, `tables.py`, `faults.py`: the simulated payment gateway, inventory, order table and
  mailer, with their tables in the engine's database and seeded fault injection;
- `pricing.py`: cart pricing shared by every caller;
- `naive.py`: the story's monolithic checkout, for comparison;
- `demo.py`: `run_black_friday()`, behind `tasker demo black-friday` (see docs/black-friday.md).
"""
