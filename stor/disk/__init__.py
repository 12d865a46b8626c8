"""The local-disk tier: placement on pairs, spool, commit, verified bodies, repair, quarantine, scrub."""
