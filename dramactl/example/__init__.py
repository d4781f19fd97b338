"""The built-in example Dramatiq application: ``dramatiq dramactl.example.tasks``.

It is what a team moving a hand-made job table onto Dramatiq writes: an email actor
with bounded exponential retries, an OCR actor, and one actor each on a high- and a
low-priority queue, a Redis results backend and a monitoring middleware. dramactl runs
it when no DRAMATIQ_COMMAND is configured, so a new install shows scaling at once, and
the tests use it as their workload.

Importing this package is free; ``dramactl.example.tasks`` builds the broker.
"""
