"""The dispatch loop: alerts from the alerts topic to the on-call channels.

`dispatcher.Dispatcher` routes and groups alerts (`routing`, `grouping`) and runs every page
through the stages composed once in `stages` (inhibit, dedup against the `ledger`, `storm`
limit, deliver with retry by `delivery`, record); `offsets` says what may be committed. The
channels themselves (HTTP) are an edge, `monitor.channels`; this package never imports them.
"""
