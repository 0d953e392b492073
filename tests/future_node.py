"""`python -m tests.future_node run ...`: the node of a later release whose wire protocol moved on
(version 2), for testing what two real nodes of incompatible versions do when they meet."""

import p2p.wire

p2p.wire.PROTOCOL_VERSION = 2  # read at call time by encode_header and decode_header

from node.cli import main  # noqa: E402  (the version must change before the node is built)

main()
