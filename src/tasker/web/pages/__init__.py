"""One module per area of the dashboard: the `Pages` (routes) and the actions taken there."""
