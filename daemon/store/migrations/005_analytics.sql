-- Analytics reads counters and indexes, never a full scan of generations.
--
-- generation_daily:  generations and their images per UTC day (of created_at), server
--                    (0 = not assigned) and status. Per-server figures over whole days.
-- generation_hourly: generations per UTC hour (of created_at) and status, fleet-wide.
--                    The analytics time series.
-- Both are kept by the triggers below (insert, status/server/created_at change, delete;
-- images added or removed), so they are exact at every commit. Partial days and hours
-- at the edges of a window are read from generations through the covering indexes.

CREATE TABLE generation_daily (
    day       TEXT NOT NULL,
    server_id INTEGER NOT NULL,
    status    TEXT NOT NULL,
    n         INTEGER NOT NULL DEFAULT 0,
    images    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (day, server_id, status)
) WITHOUT ROWID;

CREATE TABLE generation_hourly (
    hour   TEXT NOT NULL,
    status TEXT NOT NULL,
    n      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (hour, status)
) WITHOUT ROWID;

INSERT INTO generation_daily (day, server_id, status, n, images)
SELECT substr(g.created_at, 1, 10), coalesce(g.server_id, 0), g.status, count(*), coalesce(sum(i.n), 0)
FROM generations g
LEFT JOIN (SELECT generation_id, count(*) AS n FROM generation_images GROUP BY generation_id) i
       ON i.generation_id = g.id
GROUP BY 1, 2, 3;

INSERT INTO generation_hourly (hour, status, n)
SELECT substr(created_at, 1, 13), status, count(*) FROM generations GROUP BY 1, 2;

CREATE TRIGGER generations_rollup_insert AFTER INSERT ON generations
BEGIN
    INSERT INTO generation_daily (day, server_id, status, n)
    VALUES (substr(NEW.created_at, 1, 10), coalesce(NEW.server_id, 0), NEW.status, 1)
    ON CONFLICT (day, server_id, status) DO UPDATE SET n = n + 1;
    INSERT INTO generation_hourly (hour, status, n)
    VALUES (substr(NEW.created_at, 1, 13), NEW.status, 1)
    ON CONFLICT (hour, status) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER generations_rollup_update AFTER UPDATE OF status, server_id, created_at ON generations
WHEN OLD.status IS NOT NEW.status OR OLD.server_id IS NOT NEW.server_id OR OLD.created_at IS NOT NEW.created_at
BEGIN
    UPDATE generation_daily
    SET n = n - 1, images = images - (SELECT count(*) FROM generation_images WHERE generation_id = OLD.id)
    WHERE day = substr(OLD.created_at, 1, 10) AND server_id = coalesce(OLD.server_id, 0) AND status = OLD.status;
    INSERT INTO generation_daily (day, server_id, status, n, images)
    VALUES (substr(NEW.created_at, 1, 10), coalesce(NEW.server_id, 0), NEW.status, 1,
            (SELECT count(*) FROM generation_images WHERE generation_id = NEW.id))
    ON CONFLICT (day, server_id, status) DO UPDATE SET n = n + 1, images = images + excluded.images;
    UPDATE generation_hourly SET n = n - 1
    WHERE hour = substr(OLD.created_at, 1, 13) AND status = OLD.status;
    INSERT INTO generation_hourly (hour, status, n)
    VALUES (substr(NEW.created_at, 1, 13), NEW.status, 1)
    ON CONFLICT (hour, status) DO UPDATE SET n = n + 1;
END;

-- BEFORE: the images are still there (a cascade removes them after the row).
CREATE TRIGGER generations_rollup_delete BEFORE DELETE ON generations
BEGIN
    UPDATE generation_daily
    SET n = n - 1, images = images - (SELECT count(*) FROM generation_images WHERE generation_id = OLD.id)
    WHERE day = substr(OLD.created_at, 1, 10) AND server_id = coalesce(OLD.server_id, 0) AND status = OLD.status;
    UPDATE generation_hourly SET n = n - 1
    WHERE hour = substr(OLD.created_at, 1, 13) AND status = OLD.status;
END;

CREATE TRIGGER generation_images_rollup_insert AFTER INSERT ON generation_images
BEGIN
    UPDATE generation_daily SET images = images + 1
    WHERE (day, server_id, status) = (SELECT substr(created_at, 1, 10), coalesce(server_id, 0), status
                                      FROM generations WHERE id = NEW.generation_id);
END;

-- A cascade from a deleted generation finds no parent: its images were counted out above.
CREATE TRIGGER generation_images_rollup_delete AFTER DELETE ON generation_images
BEGIN
    UPDATE generation_daily SET images = images - 1
    WHERE (day, server_id, status) = (SELECT substr(created_at, 1, 10), coalesce(server_id, 0), status
                                      FROM generations WHERE id = OLD.generation_id);
END;

-- The dashboard counts finished generations by (status, completed_at) ranges; window
-- edges scan created_at with every column they need; percentiles read the completed
-- generations of each server in a window in one seek per server.
CREATE INDEX generations_status_completed_at ON generations(status, completed_at);
CREATE INDEX generations_created_cover ON generations(created_at, server_id, status, duration_ms);
CREATE INDEX generations_server_done ON generations(server_id, status, created_at, duration_ms);
