"""Use cases: what the API does, over the database and the chain."""
