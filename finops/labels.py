"""Label names with a meaning to PrismOps itself, shared by the services that write them and the reports that
read them back. No imports: the light client install uses them too."""

CACHE_SAVED_USD_LABEL = "prismops.cache_saved_usd"
"""On a response-cache hit's usage event: the exact USD text of what the avoided call would have cost."""
CACHE_KEY_LABEL = "prismops.cache_key"
"""On a response-cache hit's usage event: the first 16 hex digits of the cache key's hash."""
