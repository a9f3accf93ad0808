"""Completion sources: the readers that hand every completion message to the hub
(`redis_streams`: Redis Streams)."""
