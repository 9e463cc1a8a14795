"""A Flower app that trains with fl's secure aggregation (see docs/fl_flower.md)."""
