"""The pytest plugin: the `mailsink` and `mailsink_server` fixtures (registered as the `pytest11`
entry point `mailsink`; `-p no:mailsink` turns it off)."""
