-- hsmfs shared store (docs/scale.md, contract §9): schema version 3 (version 1
-- plus the additive mail (2) and history (3) sections at the end).
-- Run by `hsmfs-tool db-init` as the schema owner, in one transaction under
-- an advisory lock, every time (idempotent: IF NOT EXISTS / OR REPLACE).
-- The GRANTs to the daemon role are issued by db-init (the role name is an
-- option). Names live in the connection's current schema (search_path).

CREATE TABLE IF NOT EXISTS hsmfs_schema_version (
	version integer PRIMARY KEY,
	applied timestamptz NOT NULL DEFAULT now()
);

-- One row: the cluster's name (checkpoint origins) and the configuration
-- every node must run (crypto/fingerprint.h: canonical lines + SHA-256).
CREATE TABLE IF NOT EXISTS hsmfs_cluster (
	one boolean PRIMARY KEY DEFAULT true CHECK (one),
	origin text NOT NULL,
	fingerprint text NOT NULL,
	config_lines text NOT NULL,
	updated timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS hsmfs_nodes (
	name text PRIMARY KEY,
	fingerprint text NOT NULL,
	config_lines text NOT NULL,
	last_seen timestamptz NOT NULL DEFAULT now()
);

-- /fields: NX02 envelopes (never plaintext); version bumps on each write.
CREATE TABLE IF NOT EXISTS hsmfs_fields (
	name text PRIMARY KEY,
	envelope text NOT NULL,
	mtime timestamptz NOT NULL DEFAULT now(),
	version bigint NOT NULL DEFAULT 1
);

-- /history: one row per object, locked (FOR UPDATE) by an append. frontier:
-- the RFC 6962 frontier, the roots of the perfect subtrees of the tree of
-- `size` leaves, largest first, 32 bytes each (popcount(size) hashes).
CREATE TABLE IF NOT EXISTS hsmfs_history_objects (
	name text PRIMARY KEY,
	size bigint NOT NULL DEFAULT 0 CHECK (size >= 0),
	frontier bytea NOT NULL DEFAULT '\x'::bytea,
	checkpoint bytea,
	updated timestamptz NOT NULL DEFAULT now()
);

-- One row per record, append-only. record_id is chosen by the appending
-- node before COMMIT: after a connection lost during COMMIT the node looks
-- it up to learn the outcome (never appends twice).
CREATE TABLE IF NOT EXISTS hsmfs_history_records (
	object text NOT NULL REFERENCES hsmfs_history_objects (name),
	seq bigint NOT NULL CHECK (seq >= 0),
	record_id uuid NOT NULL UNIQUE,
	leaf bytea NOT NULL,
	created timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (object, seq)
);

-- Every signed checkpoint, append-only (the newest is also in the object).
CREATE TABLE IF NOT EXISTS hsmfs_checkpoints (
	object text NOT NULL REFERENCES hsmfs_history_objects (name),
	size bigint NOT NULL CHECK (size > 0),
	checkpoint bytea NOT NULL,
	created timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (object, size)
);

-- /mail: the queue. A node claims due rows with FOR UPDATE SKIP LOCKED and
-- sets a lease; an expired lease is claimable by any node.
CREATE TABLE IF NOT EXISTS hsmfs_mail_queue (
	id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	message_id text NOT NULL UNIQUE,
	state text NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'sending')),
	due timestamptz NOT NULL DEFAULT now(),
	attempts integer NOT NULL DEFAULT 0,
	lease_holder text,
	lease_expiry timestamptz,
	entry bytea NOT NULL,
	reason text,
	queued timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS hsmfs_mail_queue_due ON hsmfs_mail_queue (due);

-- sent/ and failed/: a message leaves the queue into here in one transaction.
CREATE TABLE IF NOT EXISTS hsmfs_mail_done (
	id bigint PRIMARY KEY,
	message_id text NOT NULL,
	outcome text NOT NULL CHECK (outcome IN ('sent', 'failed')),
	attempts integer NOT NULL,
	node text,
	entry bytea NOT NULL,
	reason text,
	done timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS hsmfs_mail_done_outcome ON hsmfs_mail_done (outcome, done);

-- History is append-only for everyone, the owner included (the daemon role
-- also lacks UPDATE/DELETE by GRANT): the owner must drop this trigger
-- deliberately to change history.
CREATE OR REPLACE FUNCTION hsmfs_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
	RAISE EXCEPTION 'hsmfs: % is append-only (% refused)', TG_TABLE_NAME, TG_OP
		USING ERRCODE = 'insufficient_privilege';
END
$$;
DROP TRIGGER IF EXISTS hsmfs_history_records_append_only ON hsmfs_history_records;
CREATE TRIGGER hsmfs_history_records_append_only
	BEFORE UPDATE OR DELETE ON hsmfs_history_records
	FOR EACH ROW EXECUTE FUNCTION hsmfs_append_only();
DROP TRIGGER IF EXISTS hsmfs_history_records_no_truncate ON hsmfs_history_records;
CREATE TRIGGER hsmfs_history_records_no_truncate
	BEFORE TRUNCATE ON hsmfs_history_records
	FOR EACH STATEMENT EXECUTE FUNCTION hsmfs_append_only();
DROP TRIGGER IF EXISTS hsmfs_checkpoints_append_only ON hsmfs_checkpoints;
CREATE TRIGGER hsmfs_checkpoints_append_only
	BEFORE UPDATE OR DELETE ON hsmfs_checkpoints
	FOR EACH ROW EXECUTE FUNCTION hsmfs_append_only();
DROP TRIGGER IF EXISTS hsmfs_checkpoints_no_truncate ON hsmfs_checkpoints;
CREATE TRIGGER hsmfs_checkpoints_no_truncate
	BEFORE TRUNCATE ON hsmfs_checkpoints
	FOR EACH STATEMENT EXECUTE FUNCTION hsmfs_append_only();

-- Version 2 (additive; migrates a version 1 database in place): the mail
-- views by name (store/mailq_pg.c, docs/mail.md). A queued or done row
-- keeps the entry's name (unique among queued ones), the message as
-- written (entry), its signed wire form (signed, empty while signing is
-- to be retried) and its Date; sent/ and failed/ keep the queueing time.
-- Message-ID is indexed, no longer unique: two messages may carry the same
-- one (as in a STORE), and it is how a duplicate delivery is recognised.
ALTER TABLE hsmfs_mail_queue ADD COLUMN IF NOT EXISTS name text;
UPDATE hsmfs_mail_queue SET name = 'queued-' || id WHERE name IS NULL;
ALTER TABLE hsmfs_mail_queue ALTER COLUMN name SET NOT NULL;
ALTER TABLE hsmfs_mail_queue ADD COLUMN IF NOT EXISTS signed bytea NOT NULL DEFAULT '\x'::bytea;
ALTER TABLE hsmfs_mail_queue ADD COLUMN IF NOT EXISTS msg_date bigint NOT NULL DEFAULT 0;
CREATE UNIQUE INDEX IF NOT EXISTS hsmfs_mail_queue_name ON hsmfs_mail_queue (name);
ALTER TABLE hsmfs_mail_queue DROP CONSTRAINT IF EXISTS hsmfs_mail_queue_message_id_key;
CREATE INDEX IF NOT EXISTS hsmfs_mail_queue_message_id ON hsmfs_mail_queue (message_id);
ALTER TABLE hsmfs_mail_done ADD COLUMN IF NOT EXISTS name text;
UPDATE hsmfs_mail_done SET name = 'done-' || id WHERE name IS NULL;
ALTER TABLE hsmfs_mail_done ALTER COLUMN name SET NOT NULL;
ALTER TABLE hsmfs_mail_done ADD COLUMN IF NOT EXISTS signed bytea NOT NULL DEFAULT '\x'::bytea;
ALTER TABLE hsmfs_mail_done ADD COLUMN IF NOT EXISTS msg_date bigint NOT NULL DEFAULT 0;
ALTER TABLE hsmfs_mail_done ADD COLUMN IF NOT EXISTS queued timestamptz NOT NULL DEFAULT now();
CREATE INDEX IF NOT EXISTS hsmfs_mail_done_name ON hsmfs_mail_done (name, outcome);
CREATE INDEX IF NOT EXISTS hsmfs_mail_done_message_id ON hsmfs_mail_done (message_id);

-- Version 3 (additive; version 2 kept no history rows): a history row is
-- one record as the directory store frames it (crypto/tlog.h): `leaf` is the
-- record leaf, `off` where its frame starts in the object's frames (frame =
-- "HSR1" || leaf length || seq || leaf || SHA-256(0x00 || leaf)), so a node
-- reads any byte range of an object by offset. The object row carries the
-- frames' total length (`bytes`) besides the record count (`size`).
ALTER TABLE hsmfs_history_objects ADD COLUMN IF NOT EXISTS bytes bigint NOT NULL DEFAULT 0 CHECK (bytes >= 0);
ALTER TABLE hsmfs_history_records ADD COLUMN IF NOT EXISTS off bigint NOT NULL DEFAULT 0 CHECK (off >= 0);
ALTER TABLE hsmfs_history_records ALTER COLUMN off DROP DEFAULT;
CREATE UNIQUE INDEX IF NOT EXISTS hsmfs_history_records_off ON hsmfs_history_records (object, off);

INSERT INTO hsmfs_schema_version (version) VALUES (1), (2), (3) ON CONFLICT DO NOTHING;
