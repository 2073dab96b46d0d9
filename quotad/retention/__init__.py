"""Retention: thinning old raw usage samples, pruning job runs, monthly partitions."""
