"""From an exam to a tumor probability map and mask.

Model registry and cards, networks, the sliding-window engine, post-processing.
"""
