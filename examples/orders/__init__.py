"""An asynchronous orders API whose workers announce completions on a Kafka topic."""
