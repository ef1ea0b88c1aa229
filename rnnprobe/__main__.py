"""python -m rnnprobe: the command line."""

from rnnprobe.cli.main import main

main()
