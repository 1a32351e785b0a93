"""Limits the statistics keep and the words quote, in a module that imports nothing:
the view renders the report's words without loading SciPy."""

MIN_CALLS_FOR = {0.5: 5, 0.9: 20, 0.99: 200}  # below this a quantile is not estimable
