"""The served deployments' names, without Prefect: the dashboard and the CLI name them and load no flow machinery
(`catalog.py` builds the deployments themselves)."""

GENERATE_BATCH = "generate-batch/generate-batch"
SCHEDULED_PRODUCTION = "process-inbox/scheduled-production"
