"""One module per dashboard; each has a `board()` building it."""
