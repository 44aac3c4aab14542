"""Allow ``python -m edgeagent``."""

from edgeagent.cli import run

run()
