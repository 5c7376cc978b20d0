"""Two teams, one engine: same-named workflows in separate namespaces, versions side by side.

The story's growth problem: the payments team's `process_refund` and the customer-success team's
`process_refund` are different processes with the same name. Namespaces keep them apart; semantic
versions let the payments team ship 2.1.0 while tasks started on 2.0.0 finish on 2.0.0.

- `templates/payments/`: `payments/process_refund@2.0.0` and `@2.1.0` (the money side: eligibility,
  fraud screen in 2.1.0, gateway refund, ledger, receipt);
- `templates/customer_success/`: `customer_success/process_refund@1.4.0` (the ticket side:
  validate the request, apply the refund policy, get a manager's approval when the amount needs
  one (`when:`), run the payments team's `payments/process_refund` as a sub-workflow (`task:`: a
  child task the step waits for without holding a worker or polling), close the ticket, tell the
  customer);
- `payments.py`, `customer_success.py`: each team's step handlers, in its own module;
- `services.py`: the simulated payment ledger and gateway, support desk and outbox both teams call;
- `__main__.py`: `python -m tasker.demos.team_scaling` runs the whole story on a temporary SQLite
  store.
"""
