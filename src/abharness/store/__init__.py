"""DuckDB storage: the schema and its migrations, typed records, every query, the response cache.

Nothing outside this package opens a database."""
