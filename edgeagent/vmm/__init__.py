"""Running guests: image format recognition, VM specs and the process runner.

`imageformat` and `spec` are pure; `runner` is the trio shell that starts edge-tender
or QEMU and watches it. ADR 0005 explains how a runner is chosen.
"""
