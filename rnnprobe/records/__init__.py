"""Everything a run or a study writes and reads back: the run directory (``config.json``,
``status.json``, ``tables/``, ``checkpoints/``), the study index ``study.json``, the lock of a
directory, and the rows waiting on the device for the next flush.

Only this package parses a file it wrote; the others call ``load_run``, ``read_status``,
``read_study``. The schema of every table is documented in ``store``.

May import: ``rnnprobe.errors``.
"""
