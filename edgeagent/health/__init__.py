"""Health over the network: HTTP endpoints (`http`) and their pure renderers (`render`)."""
