"""Prefect flows: thin wrappers that pass paths and store URLs, never arrays."""
