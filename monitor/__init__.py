"""posmon: real-time transaction anomaly monitor for card terminals (POS)."""

__version__ = "0.1.0"
