"""The evaluate step; see README.md."""
