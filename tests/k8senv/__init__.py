"""A real Kubernetes API server on loopback for tests (see env.py)."""
