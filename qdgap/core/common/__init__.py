"""Shared plumbing of every room: the user-facing error, file safety, the schema of every key, metrics, logs, device."""
