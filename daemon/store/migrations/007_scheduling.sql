-- The durable queue of POST /api/generate and its webhooks.
--
-- A scheduled generation is a generations row with scheduled = 1. It waits in the
-- queue while status = 'queued' and server_id IS NULL; the dispatcher assigns it to a
-- server (dispatch_seq orders dispatches) and hands it back (server_id NULL again)
-- when that server dies, up to the configured number of attempts. ``request`` keeps
-- what the client asked for, so a re-dispatch rebuilds the graph on the new server.

ALTER TABLE generations ADD COLUMN scheduled INTEGER NOT NULL DEFAULT 0;
ALTER TABLE generations ADD COLUMN request TEXT;
ALTER TABLE generations ADD COLUMN dispatch_seq INTEGER;

CREATE INDEX generations_waiting ON generations(principal, priority DESC, id)
    WHERE status = 'queued' AND server_id IS NULL;

CREATE TABLE webhook_deliveries (
    id              INTEGER PRIMARY KEY,
    generation_id   INTEGER REFERENCES generations(id) ON DELETE SET NULL,
    event           TEXT NOT NULL,
    url             TEXT NOT NULL,
    payload         TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    attempt_log     TEXT NOT NULL DEFAULT '[]',
    last_error      TEXT,
    next_attempt_at TEXT,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);
CREATE INDEX webhook_deliveries_status_id ON webhook_deliveries(status, id);
