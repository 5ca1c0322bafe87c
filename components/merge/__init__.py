"""The merge step; see README.md."""
