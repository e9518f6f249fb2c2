"""The aiohttp application: state, health, metrics, ingest, audit, backups."""
