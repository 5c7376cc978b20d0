"""The microservices story ("Service Orchestration Without Chaos") as a runnable example.

- `services/`: UserService, BillingService, PreferencesService and NotificationService, real HTTP
  services with their own SQLite state, idempotency keys and fault injection, and the runner that
  starts them;
- `templates/user_registration.yaml`: the `blog_examples/user_registration@1.0.0` workflow (a
  diamond);
- `handlers.py`: its API step handlers; `payloads.py`: the requests they send; `registration.py`:
  its task handler (service timings, parallel saving);
- `naive.py`: the story's sequential coordinator, for comparison; `reconcile.py`: what the services
  hold;
- `demo.py`: `run_registration_outage()`, behind `tasker demo registration-outage`
  (docs/microservices.md).
"""
