-- Chronicle projection tables, version 2: storage commitment (PS3.4 Annex J).
-- One row per commitment request (N-ACTION), keyed by its Transaction UID and
-- the request's event id: a StorageCommitmentRequested event writes it
-- (state REQUESTED) and the StorageCommitmentReported event answering that
-- request replaces it (REPORTED, UNDELIVERED or ABSORBED). Both events are
-- keyed by the Transaction UID, so they share a partition and the report's
-- log offset (the version) is always the larger: newest wins, whatever the
-- merge order. Read with FINAL.
-- {suffix} is replaced by '' for the live tables and '_new' during replay.

CREATE TABLE IF NOT EXISTS storage_commitment{suffix} (
    transaction_uid String,
    request_event_id String,
    requester_ae String,            -- calling AE title of the N-ACTION
    called_ae String,
    requester_peer String,          -- host:port the N-ACTION came from
    state LowCardinality(String),   -- REQUESTED, REPORTED, UNDELIVERED, ABSORBED
    items String,                   -- JSON [{"sop_class_uid":..,"sop_instance_uid":..}]
    failed String,                  -- JSON [{..,"failure_reason":274}], '[]' until reported
    event_type_id UInt8,            -- 0 until reported (and for ABSORBED), 1 or 2
    delivery String,                -- same-association, new-association, undelivered, absorbed
    destination String,
    detail String,
    request_partition UInt32,
    request_offset UInt64,          -- where the request sits in the log
    occurred_at DateTime64(6, 'UTC'),  -- when the event that wrote this row happened
    version UInt64
) ENGINE = ReplacingMergeTree(version)
ORDER BY (transaction_uid, request_event_id);
