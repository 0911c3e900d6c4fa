"""The local development stack (Kafka in KRaft mode + ClickHouse) behind `prismops stack`.

Only the CLI and tests import this package; library code never needs it.
"""
