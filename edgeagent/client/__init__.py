"""edgeagent.client package."""
