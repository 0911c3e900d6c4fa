"""PrismOps: real-time AI FinOps on Kafka, Faust, gRPC and ClickHouse."""

__version__ = "0.1.0"
