-- Chronicle projection tables, version 1.
-- Every table is ReplacingMergeTree(version): version is the log offset of the
-- event that produced the row, so applying an event twice changes nothing and
-- the newest event by log order wins, whatever the merge order. Queries read
-- with FINAL (or argMax by version), never any().
-- {suffix} is replaced by '' for the live tables and '_new' during replay.

CREATE TABLE IF NOT EXISTS patient{suffix} (
    patient_id String,
    issuer_of_patient_id String,
    patient_name String,            -- PN as Unicode, component groups joined by '='
    patient_name_norm String,       -- lower-cased, accents stripped (fuzzy matching)
    patient_birth_date String,      -- DA, YYYYMMDD or ''
    patient_birth_time String,      -- TM as received or ''
    patient_sex String,
    specific_character_set String,
    version UInt64
) ENGINE = ReplacingMergeTree(version)
ORDER BY (patient_id, issuer_of_patient_id);

CREATE TABLE IF NOT EXISTS study{suffix} (
    study_instance_uid String,
    patient_id String,
    issuer_of_patient_id String,
    patient_name String,
    patient_name_norm String,
    patient_birth_date String,
    patient_birth_time String,
    patient_sex String,
    study_date String,              -- YYYYMMDD or ''
    study_time String,              -- HHMMSS.FFFFFF normalised (padded) or ''
    accession_number String,
    study_id String,
    referring_physician_name String,
    referring_physician_name_norm String,
    study_description String,
    specific_character_set String,
    version UInt64
) ENGINE = ReplacingMergeTree(version)
ORDER BY study_instance_uid;

CREATE TABLE IF NOT EXISTS series{suffix} (
    series_instance_uid String,
    study_instance_uid String,
    modality String,
    series_number Nullable(Int64),
    series_description String,
    performed_procedure_step_start_date String,
    performed_procedure_step_start_time String,
    -- RequestAttributesSequence items as JSON [{"ScheduledProcedureStepID":..,"RequestedProcedureID":..}]
    request_attributes String,
    version UInt64
) ENGINE = ReplacingMergeTree(version)
ORDER BY series_instance_uid;

CREATE TABLE IF NOT EXISTS instance{suffix} (
    sop_instance_uid String,
    sop_class_uid String,
    series_instance_uid String,
    study_instance_uid String,
    patient_id String,
    issuer_of_patient_id String,
    modality String,                -- denormalised for ModalitiesInStudy
    instance_number Nullable(Int64),
    rows Nullable(UInt32),
    columns Nullable(UInt32),
    bits_allocated Nullable(UInt16),
    number_of_frames Nullable(UInt32),
    transfer_syntax_uid String,
    blob_key String,
    blob_size UInt64,
    dataset_sha256 String,
    dataset_offset UInt64,
    frames String,                  -- JSON [[[offset, length], ...], ...] or ''
    frames_note String,
    metadata String,                -- DICOM JSON, relative BulkDataURIs
    sidecar_key String,             -- metadata in a sidecar blob when '' above
    received_at DateTime64(6, 'UTC'),
    hidden UInt8,                   -- 1 = rejected / deleted (later event types)
    version UInt64,
    INDEX idx_study study_instance_uid TYPE bloom_filter GRANULARITY 4,
    INDEX idx_series series_instance_uid TYPE bloom_filter GRANULARITY 4
) ENGINE = ReplacingMergeTree(version)
ORDER BY sop_instance_uid;

-- One row per InstanceStored event: what was received, from whom, when (audit).
CREATE TABLE IF NOT EXISTS receipt{suffix} (
    partition UInt32,
    offset UInt64,
    event_id String,
    occurred_at DateTime64(6, 'UTC'),
    site String,
    node String,
    protocol String,
    calling_ae String,
    called_ae String,
    peer String,
    user String,
    sop_instance_uid String,
    study_instance_uid String,
    dataset_sha256 String,
    blob_key String,
    version UInt64
) ENGINE = ReplacingMergeTree(version)
ORDER BY (partition, offset);

-- Projector checkpoints live beside the rows they describe.
CREATE TABLE IF NOT EXISTS checkpoint{suffix} (
    projector String,
    partition UInt32,
    next_offset UInt64,
    version UInt64
) ENGINE = ReplacingMergeTree(version)
ORDER BY (projector, partition);
