"""The command line: one click group, one handler (``command.py``: the group's and every
command's ``main``) that turns an ``RnnprobeError`` into one line on stderr and an exit code,
and thin commands that parse flags, call one library function and print its result (``train``,
``sample`` and ``bench`` in ``main.py``, the others in a module each). Flags of run settings
come from the config fields (``options.py``). ``--help`` and ``--version`` load no torch.

May import: every package; nothing imports ``cli``.
"""
