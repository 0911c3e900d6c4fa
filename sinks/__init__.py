"""ClickHouse side of PrismOps: versioned migrations, the exactly-once batching sink and report queries."""
