"""The header a fleet host sends when it asks another host for a file (``fleet_peers``):
``Stor-Peer: local`` means "answer from your own disks only", so a miss never asks back."""

PEER_HEADER = b"stor-peer"
PEER_LOCAL = b"local"
