"""prunellm."""
