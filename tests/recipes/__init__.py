# A package only so that pytest imports conftest.py here as recipes.conftest: as a top-level
# "conftest" it would shadow tests/conftest.py, which the test modules import from.
