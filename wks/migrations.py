"""The SQLite schema as numbered migrations. Table names are part of the contract (SPEC 4).

Append a migration to change the schema; never edit one that has shipped.
"""

from __future__ import annotations

MIGRATIONS: list[str] = [
    # 1: executions, event_log, backup_log
    """
    CREATE TABLE executions (
        execution_id    TEXT PRIMARY KEY,
        workflow_id     TEXT,
        status          TEXT NOT NULL,
        progress        INTEGER NOT NULL,
        current_step    TEXT,
        total_steps     INTEGER,
        completed_steps INTEGER NOT NULL,
        data            TEXT NOT NULL,
        started_at      INTEGER NOT NULL,
        updated_at      INTEGER NOT NULL,
        error           TEXT,
        owner           TEXT,
        fold            BLOB NOT NULL,   -- the mergeable state (wks.state.Fold, msgpack)
        version         INTEGER NOT NULL DEFAULT 1
    );
    CREATE INDEX executions_status ON executions (status, updated_at);
    CREATE INDEX executions_owner ON executions (owner, status);

    CREATE TABLE event_log (
        seq          INTEGER PRIMARY KEY,
        entry_id     TEXT NOT NULL,      -- stream entry id of the first delivery
        entry_ms     INTEGER NOT NULL,   -- entry id split, for stream order
        entry_seq    INTEGER NOT NULL,
        event_id     TEXT,               -- the producer's eventId, when given
        event_key    TEXT NOT NULL,      -- eventId, or the entry id standing in for it
        execution_id TEXT NOT NULL,
        type         TEXT NOT NULL,
        ts           INTEGER NOT NULL,
        payload      TEXT NOT NULL,      -- the entry's JSON as received
        applied_at   INTEGER NOT NULL
    );
    CREATE UNIQUE INDEX event_log_identity ON event_log (execution_id, event_key);
    CREATE INDEX event_log_entry ON event_log (entry_id);
    CREATE INDEX event_log_order ON event_log (execution_id, entry_ms, entry_seq);
    CREATE INDEX event_log_applied ON event_log (applied_at);

    -- entries that carried an already-logged event under a new entry id (a producer resend):
    -- the event is logged once, and the entry is still known as applied for ?after= reads
    CREATE TABLE event_alias (
        entry_id     TEXT PRIMARY KEY,
        execution_id TEXT NOT NULL,
        event_key    TEXT NOT NULL
    );

    CREATE TABLE backup_log (
        id              INTEGER PRIMARY KEY AUTOINCREMENT,
        backup_type     TEXT NOT NULL DEFAULT 'manual',
        file_path       TEXT,
        file_size_bytes INTEGER,
        started_at      TEXT NOT NULL,
        completed_at    TEXT,
        status          TEXT NOT NULL DEFAULT 'in_progress'
                        CHECK (status IN ('in_progress', 'completed', 'failed')),
        error_message   TEXT,
        checksum        TEXT,
        request_id      TEXT,
        fencing_token   INTEGER
    );
    CREATE INDEX backup_log_status ON backup_log (status, completed_at);
    """,
    # 2: fencing tokens seen at commit (a stale holder is refused); where a restore's
    # catch-up replay starts (the state group's safe point when the backup was taken)
    """
    CREATE TABLE fence (
        name  TEXT PRIMARY KEY,
        token INTEGER NOT NULL
    );
    ALTER TABLE backup_log ADD COLUMN replay_from TEXT;
    ALTER TABLE backup_log ADD COLUMN verified_at TEXT;
    CREATE INDEX backup_log_request ON backup_log (request_id);
    """,
    # 3: event_log_order duplicated event_log_identity's leading column (execution_id): an
    # execution's events are found through the identity index and sorted (a few rows).
    # Each random index costs the fold a dirty page per event per batch; dropping this one
    # cut the SQLite time of a 1,000-event batch by about 30% (see the commit message).
    """
    DROP INDEX IF EXISTS event_log_order;
    """,
    # 4: backup files to delete. Rotation deletes the rows of old backups in its commit and
    # their files after it; a run killed in between left files no row named, which the sweep
    # (it only removes files the log names) could never find again. Their names are written
    # here in the same commit, and removed once the files are gone.
    """
    CREATE TABLE backup_trash (
        file_path TEXT PRIMARY KEY
    );
    """,
    # 5: a restore's catch-up still to run (wks.catch_up). Written into the restored copy
    # before it replaces the database and deleted once the stream is folded in, so a restore
    # killed during its catch-up leaves a database that says so, and is finished before use.
    """
    CREATE TABLE restore_catch_up (
        id          INTEGER PRIMARY KEY CHECK (id = 1),
        replay_from TEXT NOT NULL,
        backup      TEXT NOT NULL,
        restored_at TEXT NOT NULL
    );
    """,
]
