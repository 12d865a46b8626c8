"""The S3 tier: signed reads, streamed PUTs, the write-through outbox."""
