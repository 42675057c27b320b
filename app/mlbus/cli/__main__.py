"""`python -m mlbus.cli` is the same as `mlbus`."""

from mlbus.cli import main

main()
