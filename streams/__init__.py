"""Kafka plumbing without business rules: topic registry, codecs, the producer SDK for services, the Faust app factory."""
