"""Prefect tasks: one task run per image job."""
