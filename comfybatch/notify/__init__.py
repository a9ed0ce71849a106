"""Telling other systems about batches: signed webhooks."""
