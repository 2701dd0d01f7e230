"""HTTP filters."""
