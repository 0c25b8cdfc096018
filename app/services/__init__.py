"""Business logic.  Routes and CLI commands call these functions and nothing else
touches the database session."""
