"""A study: a spec (TOML), the grid of run configs it sweeps, the executors that run them
(in process, a local pool or Ray), resumably, and the live ``watch`` of a run or a study.

May import: ``report``, ``analysis``, ``training`` and every layer below them.
"""
