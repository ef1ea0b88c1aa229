"""The command line: one click group, one handler (``command.py``: the group's and every
command's ``main``) that turns an ``RnnprobeError`` into one line on stderr and an exit code,
and one thin module per command that parses flags, calls one library function and prints its
result. Flags of run settings come from the config fields (``options.py``). ``--help`` and
``--version`` load no torch.

May import: every package; nothing imports ``cli``.
"""
