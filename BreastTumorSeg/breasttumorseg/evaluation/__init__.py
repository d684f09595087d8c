"""Predicted versus reference masks: metrics, per-case and cohort comparison, conventional baselines."""
