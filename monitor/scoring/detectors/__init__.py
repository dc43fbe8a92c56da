"""One module per detector (docs/detectors.md), each behind the protocols of `base`.

A module holds the detector's settings (its section of the policy), its incident type with the
text of its alert, and the detector itself. Adding a detector is a new module here plus one line
in the registry, `monitor.scoring.policy.Detectors`.
"""
