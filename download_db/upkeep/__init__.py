"""Upkeep: keep a finished collection true (verify, revisit failures, convert raws, derive)."""
