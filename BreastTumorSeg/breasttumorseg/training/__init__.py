"""Training models on phantoms or on the user's own cases.

``config`` the run's settings; ``datasets`` which cases (phantom seeds, a folder, MAMA-MIA) and
their split; ``cases`` preparing them on the working grid (and the cache); ``sampling`` and
``augmentation`` the patches; ``losses``; ``validation``; ``checkpoints``; ``loop`` the run
itself (``distributed`` under torchrun); ``publishing`` the weights, card and registry entry.
"""
