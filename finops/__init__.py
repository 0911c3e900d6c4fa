"""The domain core: pricing, tagging, privacy, validation, budgets, GPU windows and allocation, FOCUS parsing,
live stats and anomaly events as plain Python.

No Faust, Kafka, gRPC or ClickHouse client is imported here (tests/finops/test_core_is_pure.py checks it), so
the worker's agents, the router and the sink all build on the same rules and every rule is tested alone.
"""
