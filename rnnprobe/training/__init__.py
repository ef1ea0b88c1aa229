"""One training run: its config, the plain loop (build, then for each step: batch, forward,
backward, clip, update), its callbacks (evaluation, flush, checkpoint, progress) and the
probing that fires on schedules; gradient flossing and the explosion early warning.

May import: ``rnnprobe.errors``, ``nonlinearity``, ``probes``, ``data``, ``core``, ``records``.
"""
