-- Chronicle projection tables, version 5: which instances each study and series holds.
-- The instance table is ordered by SOP Instance UID, so a study's or a series'
-- instances are spread over all of it and finding them read (nearly) every
-- granule: the projector's statistics refresh after each batch, and series and
-- study /metadata, WADO-RS and C-MOVE lists, grew with the archive (at ~150k
-- instances ~100 ms per refresh). This narrow table, ordered by study and
-- series, gives the SOP Instance UIDs by a primary-key range; the instance
-- table then reads only those keys (with FINAL) and the caller's filter decides
-- on the newest version. One row per version an instance ever had: a stale
-- row (an instance since moved to another series or study) is a harmless
-- extra candidate, so nothing is ever removed here.
-- {suffix} is replaced by '' for the live tables and '_new' during replay.

CREATE TABLE IF NOT EXISTS instance_member{suffix} (
    study_instance_uid String,
    series_instance_uid String,
    sop_instance_uid String,
    version UInt64
) ENGINE = ReplacingMergeTree(version)
ORDER BY (study_instance_uid, series_instance_uid, sop_instance_uid);

-- An index made before this migration: fill it from what the instance table
-- holds (every version still unmerged, which is all the table needs).
INSERT INTO instance_member{suffix}
SELECT study_instance_uid, series_instance_uid, sop_instance_uid, version
FROM instance{suffix};
