"""The cost-aware model router: routing.v1.Router over gRPC, fed by the live per-model table."""
