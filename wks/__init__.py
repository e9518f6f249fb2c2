"""wks: workflow execution state from Redis Streams into SQLite, with verified backups."""

__version__ = "0.1.0"
