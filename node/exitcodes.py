"""Documented process exit codes of `fedswarm` (also listed in README.md)."""

OK = 0
FAILURE = 1  # an unexpected error; the log says what
USAGE = 2  # bad command line (click's own code)
CONFIG = 3  # an invalid setting: the message names it
IDENTITY = 4  # the identity key file cannot be read or created
NETWORK = 5  # libp2p could not start (listen address, daemon)
CONTROL = 6  # the control API cannot bind its address
CHECKPOINT = 8  # the checkpoint in the data dir is corrupt or for another model
NO_NODE = 7  # `status` / `peers`: no node answers at the control address
INTERRUPTED = 130  # a second SIGINT/SIGTERM forced the exit
