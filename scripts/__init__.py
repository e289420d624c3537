"""Command-line tools on top of every layer (tables, figures, sweep previews), run as modules from the
repository root, e.g. ``python -m scripts.results_table SWEEP``: the root is then first on the import path,
so they import this checkout's packages (and ``train.py``) with no path edits."""
