"""What a send leaves behind: JSON logs, Prometheus metrics, and the per-request hooks."""
