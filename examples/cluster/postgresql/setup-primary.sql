-- Run once on the primary (sip-a): sudo -u postgres psql -f setup-primary.sql

CREATE ROLE sipfleet LOGIN PASSWORD 'CHANGE-ME';
CREATE DATABASE sipfleet OWNER sipfleet ENCODING 'UTF8' TEMPLATE template0;

CREATE ROLE replicator REPLICATION LOGIN PASSWORD 'CHANGE-ME-TOO';
-- The standby's slot: the primary keeps the WAL the standby has not streamed yet.
SELECT pg_create_physical_replication_slot('sip_b');
