"""``train(config)`` (loop.py) and what it leans on: resume points (resume.py), non-finite and interrupt
guards (guards.py), data-parallel ranks (ranks.py), progress and speed knobs."""
