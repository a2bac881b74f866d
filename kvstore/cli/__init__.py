"""The `kv` command line."""
