"""The customer analytics pipeline announced by the microservices story, as a runnable example.

Three extractions fan out in parallel, two transforms fan back in on the extractions they need, one
step derives insights from both, and two deliveries follow:

    extract_orders ─┬─> transform_customer_metrics ─┐
    extract_users ──┘                               ├─> generate_insights ─┬─> update_dashboard
    extract_products ─> transform_product_metrics ──┘                      └─> send_notifications
    (extract_orders feeds both transforms)

- `templates/customer_analytics.yaml`: the `data_pipeline/customer_analytics@1.0.0` workflow;
- `warehouse.py`: the synthetic source system, deterministic from a seed and a date range;
- `metrics.py`: the aggregates and findings, as pure functions over plain records;
- `handlers.py`: the step handlers (thin: read upstream results, call `metrics`, return a dict);
- `__main__.py`: `python -m tasker.demos.data_pipeline` runs one pipeline on a temporary SQLite
  store.
"""
