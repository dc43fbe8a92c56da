"""The contracts and core types both loops share: the event on the wire and its decoding, the
alert, batches of messages, durations and the money and text formats of alerts.

Nothing here does I/O or imports another part of posmon (docs/contract.md is the contract).
"""
