-- Facts about this installation (its id, used in the labels of the instances it rents).
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
