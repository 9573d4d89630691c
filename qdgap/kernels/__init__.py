"""Pure tensor kernels: no file I/O, no printing, device-agnostic.

``kernels`` imports neither ``core`` nor ``cli``.
"""
