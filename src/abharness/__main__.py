"""`python -m abharness`: the same as the `abharness` command."""

from .entry import main

main()
