"""LB, registrar and proxy: thin compositions of the other packages."""
