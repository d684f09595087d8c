"""Shared by every layer: errors, progress and cancellation, atomic writes, grid geometry (LPS), device choice."""
