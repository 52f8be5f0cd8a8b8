"""The store: SQLite is the single source of truth for messages and sessions."""
