"""What keeps jobs: the journal, OUTPUT_DIR (its lock and free space), housekeeping at start
and in the background, and Idempotency-Keys."""
