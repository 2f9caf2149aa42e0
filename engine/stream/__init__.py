"""Publishing (design §7): wire format v1 over ZeroMQ, the subscriber client, the asset service, CURVE, the relay
and the VMC bridge. Start at `schema.py` for the format and docs/protocol.md for the full description."""
