"""edgeagent.verify package."""
