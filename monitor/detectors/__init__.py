"""One module per detector (CONTRACT section 2, exact semantics in docs/detectors.md).

Detectors are small and take time as an argument: they receive events, the state they own and
the decision deadlines the watermark has passed, and return the incident they opened or grew.
"""
