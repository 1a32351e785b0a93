"""`python -m abharness`: the same as the `abharness` command."""

from .cli.main import main

main()
