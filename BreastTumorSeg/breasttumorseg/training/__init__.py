"""Training models on phantoms or on the user's own cases: datasets, augmentation, the loop, distributed runs."""
