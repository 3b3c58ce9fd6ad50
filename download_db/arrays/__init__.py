"""Job arrays: the shard plan, per-task databases, merge into the main database."""
