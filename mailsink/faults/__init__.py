"""Injected faults: rule parsing, the policy that decides, presets, run-time controls."""
