"""The mrx node: HTTP service, storage, ingest and the `mrx` command."""
