"""Records → numbers: a ``RunSummary`` per run (every number a user sees, each with its phase
and source), a study's summaries, and the diagnosis that classifies them. Computes from
tables only, never from a live model.

May import: ``records``, ``training.config`` and ``training.flossing`` (a run's settings and
how to read them), and the layers below those.
"""
