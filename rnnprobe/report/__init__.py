"""Summaries and records → what people read: pure plot functions, the HTML/Markdown pages of a
run, a study or a comparison, the terminal lines of ``train``, the replay of a snapshot, the
fixed points of a trained run (from its checkpoint) and the TensorBoard export.

May import: ``analysis`` and every layer below it.
"""
