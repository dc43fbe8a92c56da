"""posmon's offline code for the anomaly model: labels, replaying events into scored rows,
training and evaluation (`posmon train`, `posmon evaluate`).

A package beside `monitor`, not in it: it imports `monitor` (the features, the core's data, the
report's drawing conventions) and `monitor` never imports it, so scikit-learn and the evaluation
page stay off the monitor's path.
"""
