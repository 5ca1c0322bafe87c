"""The publish step: an immutable, versioned release of a pipeline run, and fetching it back."""
