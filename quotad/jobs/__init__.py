"""Scheduled jobs: which run claimed which slot, and how it ended."""
