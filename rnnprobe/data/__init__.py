"""What a run trains on: corpora (files, the standard library's source), tokenised text, the
synthetic long-range tasks and labelled text, as batches; and where BPTT is cut.

Owns ``corpus``, ``textdata``, ``tasks`` (the task registry and ``Batch``), ``classify`` and
``truncation``. Knows nothing of models or training.

May import: ``rnnprobe.errors``.
"""
