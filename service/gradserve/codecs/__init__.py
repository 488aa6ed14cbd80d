"""Codecs: wire formats <-> torch tensors. Transports call these; nothing here computes."""
