"""The agent's diagnostics console: line editor, commands, serial/TCP service and client."""
