"""A/B host OS updates on the device (issue 5 §3, ADR 0010).

Pure core: `slots` (the slot state machine). Shells: `bootctl` (boot counting names on the ESP,
mount, reboot), `writer` (stream into the inactive slot, read back), `service` (the agent's task).
"""
