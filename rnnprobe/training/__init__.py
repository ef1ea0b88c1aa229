"""One training run: its config, the set-up, the step, the plain loop with its named callback
points (step end, flush, evaluation, checkpoint, end; the progress bar is one callback), the
probing that fires on schedules, gradient flossing and the explosion early warning.

May import: ``records``, ``core``, ``data``, ``probes`` and every layer below them.
"""
