"""python -m rnnprobe: the command line."""

from rnnprobe.cli import main

main()
