"""Test app of fl.flower's deployment test (apps from tests/fl/flower_apps.py)."""
