"""Async glue: clock, dispatcher, stateless forwarding, the stateful proxy engine."""
