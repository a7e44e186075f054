-- Each run of a daemon writes a fresh instance token with its heartbeat: a daemon that finds
-- another token under its node id knows a second process uses the same id (a copied state
-- directory) and takes a new one (issue 14).
ALTER TABLE daemons ADD COLUMN instance text NOT NULL DEFAULT '';
