"""Benchmarks that print ratios against a reference measured in the same process: the
instrumented step against ``torch.nn.RNN``, each probe's cost, and thread counts on a busy
machine.

May import: ``training`` and every layer below it.
"""
