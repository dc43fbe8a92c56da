"""The entry layer: the `posmon` command (`main`, `commands`), the settings it reads, and the
processes it runs (`service` for `posmon run`, `oncall` for `posmon dispatch`, `demo`).

The only layer that reads the clock and the environment, wires objects together, starts threads
and installs signal handlers.
"""
