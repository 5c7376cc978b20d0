"""Four small HTTP services with their own state: UserService, BillingService, PreferencesService
and NotificationService, the dependencies of the user registration workflow.

Each is a FastAPI app over its own SQLite file (`base.py`, one module per service) that honours
`Idempotency-Key`, answers 409 with the existing resource on a conflicting create, records and
echoes `X-Correlation-ID`, and can be told to fail (`faults.py`, `POST /admin/faults`).
`runner.ServiceFleet` starts all four on free loopback ports and stops them;
`python -m tasker.demos.microservices.services` runs them until Ctrl-C.
"""

from tasker.demos.microservices.services.runner import (
    ENV_VARS,
    SERVICES,
    ServiceFleet,
    ServiceHandle,
)

__all__ = ["ENV_VARS", "SERVICES", "ServiceFleet", "ServiceHandle"]
