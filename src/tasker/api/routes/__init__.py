"""One router per resource; `tasker.api.app.create_app` mounts them all under the API prefix."""
