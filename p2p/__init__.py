"""Everything that crosses the network. The only package that imports hivemind.

It knows bytes, msgpack and numpy arrays, never torch.
"""
