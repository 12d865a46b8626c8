"""The lookup cache: an in-process LRU in front of memcached."""
