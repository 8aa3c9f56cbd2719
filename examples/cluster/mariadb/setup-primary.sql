-- Run once on the primary (sip-a) as root: mariadb < setup-primary.sql
-- The accounts replicate to the replica with everything else.

CREATE DATABASE IF NOT EXISTS sipfleet CHARACTER SET utf8mb4;

-- The sipfleet nodes: registrars write, proxies and the LB read, `sipfleet db upgrade`
-- creates the tables (hence ALL on this one database).
CREATE USER IF NOT EXISTS 'sipfleet'@'10.0.0.%' IDENTIFIED BY 'CHANGE-ME';
GRANT ALL PRIVILEGES ON sipfleet.* TO 'sipfleet'@'10.0.0.%';
-- SHOW SLAVE STATUS on the replica: its lag in /status and `sipfleet status` (MariaDB
-- 10.5.9 and later; REPLICATION CLIENT before). Without it the lag shows as unknown.
GRANT SLAVE MONITOR ON *.* TO 'sipfleet'@'10.0.0.%';

-- The replica's connection to the primary.
CREATE USER IF NOT EXISTS 'replicator'@'10.0.0.%' IDENTIFIED BY 'CHANGE-ME-TOO';
GRANT REPLICATION SLAVE ON *.* TO 'replicator'@'10.0.0.%';
