"""Image fetching."""
