-- The whole schema of design.md "Storage". Times are UTC ISO-8601 text with Z
-- (they sort as text); money is decimal text; JSON columns hold JSON text.

CREATE TABLE users (
    id            INTEGER PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    role          TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    created_at    TEXT NOT NULL,
    disabled_at   TEXT
);

CREATE TABLE sessions (
    id           INTEGER PRIMARY KEY,
    token_hash   TEXT NOT NULL UNIQUE,
    user_id      INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at   TEXT NOT NULL,
    expires_at   TEXT NOT NULL,
    last_seen_at TEXT
);
CREATE INDEX sessions_user ON sessions(user_id);

CREATE TABLE api_keys (
    id           INTEGER PRIMARY KEY,
    name         TEXT NOT NULL,
    prefix       TEXT NOT NULL,
    key_hash     TEXT NOT NULL UNIQUE,
    role         TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    created_at   TEXT NOT NULL,
    created_by   TEXT,
    last_used_at TEXT,
    revoked_at   TEXT
);

CREATE TABLE servers (
    id                 INTEGER PRIMARY KEY,
    kind               TEXT NOT NULL DEFAULT 'vast' CHECK (kind IN ('vast', 'attached')),
    vast_id            INTEGER UNIQUE,
    label              TEXT UNIQUE,
    name               TEXT NOT NULL,
    offer_id           INTEGER,
    image              TEXT,
    onstart            TEXT,
    disk               REAL,
    gpu                TEXT,
    gpu_count          INTEGER,
    gpu_ram_mb         INTEGER,
    cpu_cores          INTEGER,
    ram_gb             INTEGER,
    price_per_hour     TEXT,
    disk_cost_per_hour TEXT,
    location           TEXT,
    status             TEXT NOT NULL,
    setup_status       TEXT NOT NULL DEFAULT 'pending',
    status_message     TEXT,
    setup_message      TEXT,
    public_ip          TEXT,
    comfy_url          TEXT,
    ssh_host           TEXT,
    ssh_port           INTEGER,
    ssh_direct_host    TEXT,
    ssh_direct_port    INTEGER,
    instance_api_key   TEXT,
    metadata           TEXT NOT NULL DEFAULT '{}',
    created_at         TEXT NOT NULL,
    updated_at         TEXT NOT NULL,
    running_since      TEXT,
    ready_at           TEXT,
    last_activity_at   TEXT,
    destroyed_at       TEXT
);
CREATE INDEX servers_status ON servers(status);

CREATE TABLE server_status_history (
    id           INTEGER PRIMARY KEY,
    server_id    INTEGER NOT NULL REFERENCES servers(id) ON DELETE CASCADE,
    at           TEXT NOT NULL,
    status       TEXT NOT NULL,
    setup_status TEXT NOT NULL,
    reason       TEXT
);
CREATE INDEX server_status_history_server_at ON server_status_history(server_id, at);

CREATE TABLE workflows (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    graph       TEXT NOT NULL,
    mapping     TEXT NOT NULL DEFAULT '{}',
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);

CREATE TABLE generations (
    id              INTEGER PRIMARY KEY,
    server_id       INTEGER REFERENCES servers(id),
    workflow_id     INTEGER REFERENCES workflows(id) ON DELETE SET NULL,
    principal       TEXT,
    prompt          TEXT NOT NULL,
    negative_prompt TEXT NOT NULL DEFAULT '',
    parameters      TEXT NOT NULL DEFAULT '{}',
    checkpoint      TEXT,
    seed            INTEGER,
    status          TEXT NOT NULL CHECK (status IN ('queued', 'processing', 'completed', 'failed', 'cancelled')),
    progress        INTEGER NOT NULL DEFAULT 0,
    step            INTEGER,
    steps           INTEGER,
    queue_id        TEXT,
    error           TEXT,
    priority        INTEGER NOT NULL DEFAULT 0,
    webhook_url     TEXT,
    attempts        INTEGER NOT NULL DEFAULT 0,
    attempt_log     TEXT NOT NULL DEFAULT '[]',
    created_at      TEXT NOT NULL,
    started_at      TEXT,
    completed_at    TEXT,
    duration_ms     INTEGER
);
CREATE INDEX generations_server_id ON generations(server_id, id DESC);
CREATE INDEX generations_server_status_id ON generations(server_id, status, id DESC);
CREATE INDEX generations_status_id ON generations(status, id);
CREATE INDEX generations_queue_id ON generations(queue_id);
CREATE INDEX generations_completed_at ON generations(completed_at);
CREATE INDEX generations_created_at ON generations(created_at);

CREATE TABLE generation_images (
    id            INTEGER PRIMARY KEY,
    generation_id INTEGER NOT NULL REFERENCES generations(id) ON DELETE CASCADE,
    node_id       TEXT,
    filename      TEXT NOT NULL,
    path          TEXT NOT NULL,
    content_type  TEXT NOT NULL,
    size          INTEGER NOT NULL,
    sha256        TEXT NOT NULL,
    width         INTEGER,
    height        INTEGER,
    created_at    TEXT NOT NULL
);
CREATE INDEX generation_images_generation ON generation_images(generation_id);

CREATE TABLE models (
    server_id INTEGER NOT NULL REFERENCES servers(id) ON DELETE CASCADE,
    folder    TEXT NOT NULL,
    name      TEXT NOT NULL,
    size      INTEGER,
    seen_at   TEXT NOT NULL,
    PRIMARY KEY (server_id, folder, name)
);
CREATE INDEX models_name ON models(folder, name);

CREATE TABLE model_downloads (
    id          INTEGER PRIMARY KEY,
    server_id   INTEGER NOT NULL REFERENCES servers(id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    url         TEXT NOT NULL,
    folder      TEXT NOT NULL,
    filename    TEXT NOT NULL,
    sha256      TEXT,
    method      TEXT,
    status      TEXT NOT NULL,
    bytes_done  INTEGER NOT NULL DEFAULT 0,
    bytes_total INTEGER,
    rate        REAL,
    error       TEXT,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE INDEX model_downloads_server ON model_downloads(server_id, id DESC);

CREATE TABLE audit_logs (
    id          INTEGER PRIMARY KEY,
    at          TEXT NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    target_type TEXT,
    target_id   TEXT,
    outcome     TEXT NOT NULL,
    client_addr TEXT,
    request_id  TEXT,
    details     TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_logs_at ON audit_logs(at);
CREATE INDEX audit_logs_action ON audit_logs(action, id);
CREATE INDEX audit_logs_actor ON audit_logs(actor, id);
CREATE INDEX audit_logs_target ON audit_logs(target_type, target_id, id);
