"""edgeagent.store package."""
