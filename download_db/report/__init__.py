"""Status report: collect from the database read-only, render text/HTML, check integrity."""
