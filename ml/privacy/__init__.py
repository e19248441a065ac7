"""Privacy: pseudonyms, erasure, retention, owner-only files and secret masking."""
