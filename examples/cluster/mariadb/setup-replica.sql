-- Run once on the replica (sip-b) as root, after loading the primary's dump
-- (docs/operations.md, step 3): the dump set gtid_slave_pos to where it was taken.
-- For a brand-new primary whose binary log holds everything, no dump is needed: with an
-- empty gtid_slave_pos the replica starts at the beginning of the log.

CHANGE MASTER TO
  MASTER_HOST = '10.0.0.1',
  MASTER_PORT = 3306,
  MASTER_USER = 'replicator',
  MASTER_PASSWORD = 'CHANGE-ME-TOO',
  MASTER_USE_GTID = slave_pos,
  MASTER_CONNECT_RETRY = 5;       -- seconds between reconnects after the primary was down

START SLAVE;
-- Check: SHOW SLAVE STATUS\G  -> Slave_IO_Running: Yes, Slave_SQL_Running: Yes
