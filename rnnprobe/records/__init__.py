"""Everything a run or a study writes and reads back: the run directory (``config.json``,
``status.json``, ``tables/``, ``checkpoints/``), the study index ``study.json``, the lock of a
directory, and the rows waiting on the device for the next flush.

Others read these files only through this package (``load_run``, ``read_status``,
``read_study``). The tables' columns are documented in ``schema``; ``index`` holds the small
JSON files and the atomic write every file here goes through. (A run's ``snapshots/`` are
training's own: ``training.warning`` writes and reads them.)

May import: ``rnnprobe.errors``.
"""
