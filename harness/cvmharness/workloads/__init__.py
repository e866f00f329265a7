"""Workloads: what runs between a client and a server placement."""
