"""Model definitions (one file per model) and their loading."""
