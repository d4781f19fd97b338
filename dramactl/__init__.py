"""dramactl: run a fleet of Dramatiq workers as systemd units and size it to the queue.

The library is the product; ``dramactl.cli`` is a thin skin over it. Importing this
package imports nothing else, so the scaler's tick pays only for what it uses.
"""
