"""`abharness serve`: an OpenAI-compatible gateway that splits live traffic between an
experiment's arms and records every request as a call (SPEC §16, docs/serve.md)."""
