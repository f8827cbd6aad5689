"""Output files: video encoding and thumbnails."""
