"""`python -m fedprofile` runs the CLI."""

from fedprofile.cli import app

app()
