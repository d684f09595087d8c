"""One segmentation run: the validated request, the runner that returns its record, and a cohort of runs."""
