"""The `abharness` command group; one small module per command."""
