"""The HTTP edge, shared by both listeners: the guarded server (`listener`), clients' bodies
(`body`), the one error boundary (`boundary`), what is known of a request (`context`), header
rules (`headers`, `prefer`), and the upstream: the keep-alive pool (`pool`, the one upstream
client) and forwarding and relaying through it (`upstream`)."""
