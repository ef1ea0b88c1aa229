"""The recurrence itself: Elman layers with a hand-written BPTT, the models built on them, their
initialisations, and the capture that reads a backward pass.

Owns ``bptt`` (the forward and backward recurrences; ``fused`` runs them as Triton kernels on
request), ``models`` (``ElmanRNN`` with
``torch.nn.RNN``'s parameter layout, language model, classifier, regressor), ``initialisation``,
``capture`` (adjoints, reach and states of one backward pass), ``instrument`` (the same for a
model of your own), ``device`` and ``threads`` (chosen once per process).

May import: ``rnnprobe.errors``, ``rnnprobe.nonlinearity``, ``rnnprobe.probes``.
"""
