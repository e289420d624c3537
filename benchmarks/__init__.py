"""Speed and memory measurements (their results live in README.md and docs/), run as modules from the
repository root, e.g. ``python -m benchmarks.step_time --threads 2``: the root is then first on the import
path, so they import this checkout's packages with no path edits."""
