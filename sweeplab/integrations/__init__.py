"""Adapters that report a training framework's evaluations to sweeplab's ``report`` (import each by name)."""
