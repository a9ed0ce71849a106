"""Deployments: the ways in (on demand, on a schedule, over the API) and the platform launcher."""
