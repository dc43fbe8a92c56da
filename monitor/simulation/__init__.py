"""The traffic simulator (`posmon simulate`); the public API is `simulator` (`Simulation`,
`SimulationSpec`, `write_simulation`).

One concept per module:

- `world`: merchants, terminals, currencies, the card pool and the rhythm of the day;
- `lines`: identifiers, timestamps and the JSON line of an event, and the arrival-ordered queue;
- `traffic`: background purchases, retries, reversals, debits, refunds and pre-authorisations,
  shaped so that no detector fires by accident;
- `incidents`: labelled incidents and near misses, each on entities dedicated to it;
- `anomalies`: labelled behaviour anomalies that no rule names (for the anomaly model), on
  background cards, from a random stream and id ranges of their own;
- `malformed`: lines that must be rejected (not JSON, schema errors, PANs);
- `delivery`: the order a reader sees: redeliveries, malformed lines, late-event labels.
"""
