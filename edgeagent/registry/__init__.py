"""edgeagent.registry package."""
