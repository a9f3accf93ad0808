"""Completion sources: where completions are read from, each handed to the hub (for the
waiters) and, for the brokers, to the webhook dispatcher too.

    redis_streams  the `XREAD` loop over every Redis stream a route waits on
    base           the one small interface of a broker source (connect, read, ack, probe,
                   close), the two roles (waiters, webhooks), what a read hands over
    kinds          which module serves which kind (its library imported on first use)
    kafka          Kafka through aiokafka
    amqp           RabbitMQ (AMQP 0-9-1) through aio-pika
    nats           NATS JetStream through nats-py
    loop           one loop per source and role per process: connect with backoff, read,
                   probe, hand on; `feed_waiters`, the waiters' handler
    health         which sources are read: `sidecar_source_up`, `/readyz`, fallback reasons
"""
