"""Alembic migrations of the jamins schema (run by `jamins migrate` and at start-up)."""
