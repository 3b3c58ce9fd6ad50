"""Download stage: recovery, scheduler, worker threads, the result writer."""
