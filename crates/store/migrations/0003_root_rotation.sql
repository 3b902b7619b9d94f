-- Root rotation: the next admin secret of a target, sealed like `target_secrets.sealed`,
-- recorded (state `rotating`) before the target is changed and removed once the target is
-- known to hold it or to have kept the old one. While a row exists both secrets are
-- candidates; start-up resolution tries them, so a crash mid-rotation loses neither.
CREATE TABLE target_rotations (
    target     TEXT    PRIMARY KEY REFERENCES targets (name),
    sealed     BLOB    NOT NULL,
    started_at INTEGER NOT NULL
);
