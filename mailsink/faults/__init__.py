"""Injected faults, all in one place.

- rules: what a rule says ([[fault]] tables, run-time rules), parsed with the key named in errors;
- policy: which rules fire for one reply, with hits, `times` budgets and rate windows;
- presets: the one-key rules of the TUI's Faults screen;
- controls: FaultControls, the rules in force while running (switches, presets, run-time rules)
  and `consider`, the gate the SMTP handler asks before each reply a rule may change.
"""
