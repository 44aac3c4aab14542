"""edgeagent: firmware agent for edge nodes.

The device agent pulls signed unikernel images from a TUF registry, verifies them, boots
them under KVM (edge-tender) or QEMU, supervises them and reports health. The same package
holds the publisher and operator CLI (`edgeagent ...`).
"""

__version__ = "0.1.0"
