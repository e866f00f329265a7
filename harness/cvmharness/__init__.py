"""cvmharness: what confidential computing costs a network-heavy workload."""

from __future__ import annotations

__version__ = "0.1.0"
