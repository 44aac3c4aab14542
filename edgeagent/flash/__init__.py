"""Flashing disk images onto edge hardware (``edgeagent flash``, ADR-0009)."""
