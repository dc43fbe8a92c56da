"""The scoring loop: accepted events in, alerts out, on event time.

`pipeline` is the loop over a `Source` and a `Sink`; `scorer.Scorer` owns the shared event-time
state (dedup, watermark, attempts, timers) and hands each event to the detectors of the registry
(`policy.Detectors`, one module each under `detectors/`); `metrics` exports what it did.
"""
