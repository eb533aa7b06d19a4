-- Fixture: a database written by schema v1 (Store at user_version 1, dumped with iterdump).
-- Never edit after release: later migrations must open it unchanged (zigpy tests/databases).
PRAGMA user_version=1;
BEGIN TRANSACTION;
CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        t REAL NOT NULL,
        action TEXT NOT NULL,
        actor TEXT NOT NULL,
        reference TEXT,
        details TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    );
CREATE TABLE calls (
        id INTEGER PRIMARY KEY,
        reference TEXT UNIQUE NOT NULL,
        line TEXT,
        direction TEXT CHECK (direction IS NULL OR direction IN ('in', 'out')),
        caller_number TEXT,
        caller_name TEXT,
        caller_withheld INTEGER,
        cid_date TEXT,
        cid_time TEXT,
        clock_synced INTEGER,
        ring_at REAL,
        answer_at REAL,
        notice_start_at REAL,
        notice_end_at REAL,
        notice_version TEXT,
        notice_completed INTEGER,
        record_start_at REAL,
        agent_answer_at REAL,
        end_at REAL,
        recording_decision TEXT NOT NULL DEFAULT 'pending'
            CHECK (recording_decision IN ('recorded', 'declined', 'failed', 'none', 'pending')),
        outcome TEXT NOT NULL DEFAULT 'in_progress' CHECK (outcome IN ('bridged', 'voicemail', 'abandoned', 'missed', 'error', 'interrupted', 'in_progress')),
        recording_path TEXT,
        recording_sha256 TEXT,
        recording_bytes INTEGER,
        duration_s REAL,
        language TEXT,
        created_at REAL NOT NULL
    );
INSERT INTO "calls" VALUES(1,'42719038','main','in','+3611234567','KOVACS',0,NULL,NULL,NULL,1700000000.0,1700000005.0,NULL,NULL,NULL,NULL,NULL,NULL,1700000065.0,'recorded','bridged',NULL,NULL,NULL,55.0,'hu',1700000000.0);
CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        call_id INTEGER NOT NULL REFERENCES calls (id) ON DELETE CASCADE,
        t REAL NOT NULL,
        state TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT ''
    );
INSERT INTO "events" VALUES(1,1,1700000000.0,'ringing','');
INSERT INTO "events" VALUES(2,1,1700000005.0,'answered','');
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
INSERT INTO "meta" VALUES('call_counter','2');
CREATE INDEX idx_calls_caller_number ON calls (caller_number);
CREATE INDEX idx_calls_ring_at ON calls (ring_at);
CREATE INDEX idx_events_call_id ON events (call_id, t);
COMMIT;
