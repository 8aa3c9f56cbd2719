"""Async glue: clock, endpoint (messages in to a handler, bytes out), stateless forwarding,
the stateful proxy engine, the registrar, the load balancer, overload and authentication."""
