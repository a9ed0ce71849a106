"""The HTTP shim: triggers the `generate-batch` deployment and reads batches back from Prefect and the store."""
