"""The device agent: desired state, supervision, OTA updates (``edgeagent agent``).

Pure cores: `desired`, `policy`, `ota`. Shells: `state` (files), `status` (read-only views),
`supervisor` and `core` (trio). ADR 0007 documents the state on disk and the OTA phases.
"""
