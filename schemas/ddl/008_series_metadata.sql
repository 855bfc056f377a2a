-- Chronicle projection tables, version 8: each series' /metadata as one document.
-- A viewer opening a series asks for its /metadata: ~100 instances' DICOM
-- JSON. Read from instance_member that is ~7 ms of chDB for 100 rows plus a
-- Python row each; one prepared document is one row and one column (~4 ms).
-- The projector writes a stale mark (document = '') for every series a batch
-- touches, in the batch, and the document once the series has been quiet for
-- a moment (projections.documents); replay builds every document at its end.
-- A document holds the JSON array exactly as /metadata answers it, with each
-- BulkDataURI's base URL left as a NUL character (the request's base goes
-- there: compact JSON never holds a raw NUL). A series with a sidecar or an
-- unusual BulkDataURI gets no document; readers then read instance_member.
-- `version` is the projector's clock (ns), not a log offset: marks and
-- documents of one series may come from batches of different partitions.
-- Existing series get documents when next touched or at the next replay.
-- {suffix} is replaced by '' for the live tables and '_new' during replay.

CREATE TABLE IF NOT EXISTS series_metadata{suffix} (
    study_instance_uid String,
    series_instance_uid String,
    version UInt64,
    document String
) ENGINE = ReplacingMergeTree(version)
ORDER BY (study_instance_uid, series_instance_uid);
