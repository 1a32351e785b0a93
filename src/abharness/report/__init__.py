"""Reports: figures of a run (build), statistics, Markdown and HTML renderers, run comparison."""
