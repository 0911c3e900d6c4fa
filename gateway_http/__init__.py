"""LLM usage over HTTP for services in any language (`prismops ingest serve`): CloudEvents 1.0 or plain JSON,
checked by the worker's rules with every broken field named, written to Kafka before the answer."""
