"""Peer implementations measured beside costpipe on the same topic data (bench only)."""
