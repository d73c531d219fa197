"""trainguard node agent: daemon, audit log, posture checks, telemetry, incidents, hooks, API.

This package must stay light: it never imports torch, and sklearn only where a detector needs it.
"""
