"""Image files: decode and resize, temp-then-rename store, on-disk layout."""
