"""Shared-memory numpy frames: a pool of fixed-shape chunks handed between runnables without copies."""
