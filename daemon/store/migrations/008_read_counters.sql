-- Counters that keep two hot reads cheap at a million generations.
--
-- generation_blocks / generation_blocks_all: how many generations each server (NULL
--   server: only in _all) has per status in each block of 4096 ids (id >> 12). A deep
--   page (a large OFFSET) sums the blocks newest first to find the block it starts in,
--   then walks the index from there: a few thousand index entries instead of the whole
--   offset (store/generations.py ``deep_page_sql``).
-- change_counters 'servers': grows with every change to what the dashboard's spend, burn
--   rate and server counts read (servers' kind, status, setup status, prices, creation
--   and destruction, and their status history), so those can be kept between changes
--   (services/analytics.py). A generation's progress or an activity stamp never moves it.
--
-- All of them are kept by the triggers below, in the writing transaction, so they are
-- exact at every commit, whoever writes.

CREATE TABLE generation_blocks (
    server_id INTEGER NOT NULL,
    status    TEXT NOT NULL,
    block     INTEGER NOT NULL,
    n         INTEGER NOT NULL,
    PRIMARY KEY (server_id, status, block)
) WITHOUT ROWID;

CREATE TABLE generation_blocks_all (
    status TEXT NOT NULL,
    block  INTEGER NOT NULL,
    n      INTEGER NOT NULL,
    PRIMARY KEY (status, block)
) WITHOUT ROWID;

INSERT INTO generation_blocks (server_id, status, block, n)
SELECT server_id, status, id >> 12, count(*) FROM generations WHERE server_id IS NOT NULL GROUP BY 1, 2, 3;

INSERT INTO generation_blocks_all (status, block, n)
SELECT status, id >> 12, count(*) FROM generations GROUP BY 1, 2;

CREATE TRIGGER generations_blocks_insert AFTER INSERT ON generations
BEGIN
    INSERT INTO generation_blocks_all (status, block, n) VALUES (NEW.status, NEW.id >> 12, 1)
    ON CONFLICT (status, block) DO UPDATE SET n = n + 1;
    INSERT INTO generation_blocks (server_id, status, block, n)
    SELECT NEW.server_id, NEW.status, NEW.id >> 12, 1 WHERE NEW.server_id IS NOT NULL
    ON CONFLICT (server_id, status, block) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER generations_blocks_update AFTER UPDATE OF id, server_id, status ON generations
WHEN OLD.id IS NOT NEW.id OR OLD.server_id IS NOT NEW.server_id OR OLD.status IS NOT NEW.status
BEGIN
    UPDATE generation_blocks_all SET n = n - 1 WHERE status = OLD.status AND block = OLD.id >> 12;
    INSERT INTO generation_blocks_all (status, block, n) VALUES (NEW.status, NEW.id >> 12, 1)
    ON CONFLICT (status, block) DO UPDATE SET n = n + 1;
    UPDATE generation_blocks SET n = n - 1
    WHERE server_id = OLD.server_id AND status = OLD.status AND block = OLD.id >> 12;
    INSERT INTO generation_blocks (server_id, status, block, n)
    SELECT NEW.server_id, NEW.status, NEW.id >> 12, 1 WHERE NEW.server_id IS NOT NULL
    ON CONFLICT (server_id, status, block) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER generations_blocks_delete AFTER DELETE ON generations
BEGIN
    UPDATE generation_blocks_all SET n = n - 1 WHERE status = OLD.status AND block = OLD.id >> 12;
    UPDATE generation_blocks SET n = n - 1
    WHERE server_id = OLD.server_id AND status = OLD.status AND block = OLD.id >> 12;
END;

-- When a status-history row dated later than a kept snapshot comes into the window: one seek.
CREATE INDEX server_status_history_at ON server_status_history(at);

CREATE TABLE change_counters (
    name TEXT PRIMARY KEY,
    n    INTEGER NOT NULL
) WITHOUT ROWID;

INSERT INTO change_counters (name, n) VALUES ('servers', 0);

CREATE TRIGGER servers_changed_insert AFTER INSERT ON servers
BEGIN
    UPDATE change_counters SET n = n + 1 WHERE name = 'servers';
END;

CREATE TRIGGER servers_changed_update
AFTER UPDATE OF id, kind, status, setup_status, price_per_hour, disk_cost_per_hour, created_at, destroyed_at
ON servers
WHEN OLD.id IS NOT NEW.id OR OLD.kind IS NOT NEW.kind OR OLD.status IS NOT NEW.status
  OR OLD.setup_status IS NOT NEW.setup_status OR OLD.price_per_hour IS NOT NEW.price_per_hour
  OR OLD.disk_cost_per_hour IS NOT NEW.disk_cost_per_hour OR OLD.created_at IS NOT NEW.created_at
  OR OLD.destroyed_at IS NOT NEW.destroyed_at
BEGIN
    UPDATE change_counters SET n = n + 1 WHERE name = 'servers';
END;

CREATE TRIGGER servers_changed_delete AFTER DELETE ON servers
BEGIN
    UPDATE change_counters SET n = n + 1 WHERE name = 'servers';
END;

CREATE TRIGGER server_history_changed_insert AFTER INSERT ON server_status_history
BEGIN
    UPDATE change_counters SET n = n + 1 WHERE name = 'servers';
END;

CREATE TRIGGER server_history_changed_update AFTER UPDATE ON server_status_history
BEGIN
    UPDATE change_counters SET n = n + 1 WHERE name = 'servers';
END;

CREATE TRIGGER server_history_changed_delete AFTER DELETE ON server_status_history
BEGIN
    UPDATE change_counters SET n = n + 1 WHERE name = 'servers';
END;
