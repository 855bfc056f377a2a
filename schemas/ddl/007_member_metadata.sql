-- Chronicle projection tables, version 7: instance metadata in series order.
-- Series and study /metadata read every instance's DICOM JSON. The instance
-- table is ordered by SOP Instance UID, so a series of 100 instances sat in
-- ~100 granules of it: ~14 ms of chDB per request at 1M instances, against ~7
-- ms for one key range of a table ordered by study and series. instance_member
-- is that table, so it now carries what /metadata returns (metadata,
-- sidecar_key, instance_number for the order) and `hidden`.
-- Its rows at an instance's current place are its newest version there; the
-- places an instance has left get a tombstone (hidden = 1) with the version
-- that moved it: the projector writes them when a batch moves an instance
-- (projections.members), replay writes them once its tables are full. So
-- `instance_member FINAL WHERE hidden = 0` holds exactly the live instances,
-- by study and series. Other readers still use it for candidates only.
-- {suffix} is replaced by '' for the live tables and '_new' during replay.

ALTER TABLE instance_member{suffix}
    ADD COLUMN IF NOT EXISTS instance_number Nullable(Int64),
    ADD COLUMN IF NOT EXISTS metadata String,
    ADD COLUMN IF NOT EXISTS sidecar_key String,
    ADD COLUMN IF NOT EXISTS hidden UInt8;

-- An index made before this migration: refill from every version the instance
-- table still holds (a version merged away left no place behind), then
-- tombstone the places instances have left.
TRUNCATE TABLE instance_member{suffix};

INSERT INTO instance_member{suffix}
    (study_instance_uid, series_instance_uid, sop_instance_uid, version,
     instance_number, metadata, sidecar_key, hidden)
SELECT study_instance_uid, series_instance_uid, sop_instance_uid, version,
       instance_number, metadata, sidecar_key, hidden
FROM instance{suffix};

INSERT INTO instance_member{suffix}
    (study_instance_uid, series_instance_uid, sop_instance_uid, version, hidden)
SELECT m.study_instance_uid, m.series_instance_uid, m.sop_instance_uid, i.version, 1
FROM (
    SELECT DISTINCT study_instance_uid, series_instance_uid, sop_instance_uid
    FROM instance_member{suffix}
) AS m
INNER JOIN (
    SELECT sop_instance_uid, study_instance_uid, series_instance_uid, version
    FROM instance{suffix} FINAL
) AS i ON m.sop_instance_uid = i.sop_instance_uid
WHERE m.study_instance_uid != i.study_instance_uid
   OR m.series_instance_uid != i.series_instance_uid;
