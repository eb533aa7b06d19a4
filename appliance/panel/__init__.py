"""panel room."""
