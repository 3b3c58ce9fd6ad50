"""The database: connection and pragmas, schema and migrations, one module per table's SQL."""
