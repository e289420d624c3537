"""The post-hoc tests' shared fixtures."""

from tests.support.posthoc import images  # noqa: F401  (a fixture: three random 28x28 images)
