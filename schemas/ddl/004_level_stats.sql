-- Chronicle projection tables, version 4: study and series statistics.
-- What QIDO-RS and C-FIND return about a study or series as a whole (number of
-- series and instances, modalities and SOP classes in the study) and whether it
-- has a live instance at all, kept per entity instead of grouped from the
-- instance table on every query (which at a million instances cost ~0.5 s).
-- The projector recomputes the rows of the studies each batch touched;
-- `representative` is the study's (series') newest live instance, whose stored
-- metadata answers attributes without a column. version is the projector's
-- running event count, so a later recomputation always wins.
-- {suffix} is replaced by '' for the live tables and '_new' during replay.

CREATE TABLE IF NOT EXISTS study_stats{suffix} (
    study_instance_uid String,
    n_series UInt64,
    n_instances UInt64,
    modalities Array(String),
    sop_classes Array(String),
    representative String,
    version UInt64
) ENGINE = ReplacingMergeTree(version)
ORDER BY study_instance_uid;

CREATE TABLE IF NOT EXISTS series_stats{suffix} (
    series_instance_uid String,
    study_instance_uid String,
    n_instances UInt64,
    representative String,
    version UInt64
) ENGINE = ReplacingMergeTree(version)
ORDER BY series_instance_uid;

-- An index made before this migration gets its statistics now (a fresh one: none).
INSERT INTO study_stats{suffix}
SELECT study_instance_uid, uniqExact(series_instance_uid), count(),
       arraySort(groupUniqArray(modality)), arraySort(groupUniqArray(sop_class_uid)),
       argMax(sop_instance_uid, (version, sop_instance_uid)), 0
FROM instance{suffix} FINAL WHERE hidden = 0 GROUP BY study_instance_uid;

INSERT INTO series_stats{suffix}
SELECT series_instance_uid, any(study_instance_uid), count(),
       argMax(sop_instance_uid, (version, sop_instance_uid)), 0
FROM instance{suffix} FINAL WHERE hidden = 0 GROUP BY series_instance_uid;
