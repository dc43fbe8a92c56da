"""The streaming edge: the sources and sinks of the scoring loop outside the process.

Kafka (kafka-python 3; `source`, `sink`, `topics`, `produce`, with `settings` and `client`), the
embedded Kafka-compatible broker of the demo and the tests (`embedded`), and JSONL files for
`posmon replay` (`files`). Only this package imports `kafka` (an import contract in `make lint`).
"""
