"""`python -m app` runs the jamins console script."""

from app.cli import main

main()
