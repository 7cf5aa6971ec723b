"""The bottom of the import graph: what every folder shares and nothing of ours is imported by.

    errors   BadInput (one line naming the file, key or value) and the ``cli`` wrapper of every command
    files    atomic writes (whole or not at all, with the umask's permissions)
    seeds    derive_seed / step_seed: every random stream is a pure function of its numbers
"""
