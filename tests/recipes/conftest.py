# The recipes are run by tests/test_recipes.py, each in a pytest (or unittest) run of its own
# with its stack; the suite itself must not collect them.
collect_ignore_glob = ["*"]
