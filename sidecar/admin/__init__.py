"""The admin listener: health, readiness, metrics, the admin API under `/admin/api/` and the
client portal page under `/admin/`."""
