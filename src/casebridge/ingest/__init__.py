"""Registry ingestion: many cases, unattended, convert -> validate -> push, with a durable job state."""
