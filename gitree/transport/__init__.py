"""Moving commits between repositories with verification (layer 3): bundle (offline update files) and
distribution (push, fetch, clone)."""
