"""Batch map over runnable workers: per-item isolation, exact attribution of deaths, retries, timeouts."""
