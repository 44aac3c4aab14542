"""CLI subcommands. Each module exposes ``register(subparsers)``; see `edgeagent.cli`.

A command handler takes the parsed `argparse.Namespace` and returns an exit status.
Handlers raise `EdgeAgentError` subclasses; `edgeagent.cli` maps them to exit codes.
"""
