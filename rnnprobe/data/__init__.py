"""What a run trains on: corpora (files, the standard library's source), tokenised text, the
synthetic long-range tasks and labelled text, as batches; and where BPTT is cut.

Owns ``corpus``, ``textdata``, ``tasks`` (the task registry and ``Batch``), ``classify``,
``truncation`` and ``names`` (the choices, torch-free). Knows nothing of models or training
loops (a task factory takes a run config, imported for type checking only).

May import: ``rnnprobe.errors``, ``rnnprobe.seeds``.
"""
