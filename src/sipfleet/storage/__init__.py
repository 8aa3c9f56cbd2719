"""The storage interface and its SQLite, MariaDB/MySQL and PostgreSQL backends."""
