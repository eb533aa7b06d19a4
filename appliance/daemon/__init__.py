"""daemon room."""
