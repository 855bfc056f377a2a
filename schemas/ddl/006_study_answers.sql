-- Chronicle projection tables, version 6: a study's attributes beside its statistics.
-- A study search (QIDO-RS /studies, C-FIND at STUDY level) matched the study
-- table and then read the page's aggregates from study_stats in a second
-- statement; each chDB statement costs milliseconds whatever its size (an
-- accession lookup at 100k instances: 13 + 5 ms). With the study's patient and
-- study attributes copied here by the projector's statistics refresh (and by
-- replay's rebuild), a study search is one statement over one table: match,
-- liveness (n_instances > 0), ModalitiesInStudy and the returned aggregates.
-- `answer` packs the attributes a study answer returns into one JSON array of
-- strings (projections.stats.ANSWER_ATTRIBUTES order): chDB's cost grows with
-- the number of columns a statement returns (~0.25 ms each), so the search
-- matches on the columns and returns the one packed value.
-- The study table stays the source of these columns; this is a copy that the
-- refresh rewrites for every study a batch touches.
-- {suffix} is replaced by '' for the live tables and '_new' during replay.

ALTER TABLE study_stats{suffix}
    ADD COLUMN IF NOT EXISTS patient_id String,
    ADD COLUMN IF NOT EXISTS issuer_of_patient_id String,
    ADD COLUMN IF NOT EXISTS patient_name String,
    ADD COLUMN IF NOT EXISTS patient_name_norm String,
    ADD COLUMN IF NOT EXISTS patient_birth_date String,
    ADD COLUMN IF NOT EXISTS patient_birth_time String,
    ADD COLUMN IF NOT EXISTS patient_sex String,
    ADD COLUMN IF NOT EXISTS study_date String,
    ADD COLUMN IF NOT EXISTS study_time String,
    ADD COLUMN IF NOT EXISTS accession_number String,
    ADD COLUMN IF NOT EXISTS study_id String,
    ADD COLUMN IF NOT EXISTS referring_physician_name String,
    ADD COLUMN IF NOT EXISTS referring_physician_name_norm String,
    ADD COLUMN IF NOT EXISTS study_description String,
    ADD COLUMN IF NOT EXISTS specific_character_set String,
    ADD COLUMN IF NOT EXISTS answer String;

-- An index made before this migration: copy the attributes into every row (at
-- the row's own version: on equal versions the later insert wins).
INSERT INTO study_stats{suffix}
SELECT s.study_instance_uid, s.n_series, s.n_instances, s.modalities, s.sop_classes,
       s.representative, s.version,
       st.patient_id, st.issuer_of_patient_id, st.patient_name, st.patient_name_norm,
       st.patient_birth_date, st.patient_birth_time, st.patient_sex, st.study_date,
       st.study_time, st.accession_number, st.study_id, st.referring_physician_name,
       st.referring_physician_name_norm, st.study_description, st.specific_character_set,
       toJSONString([s.study_instance_uid, st.patient_id, st.issuer_of_patient_id, st.patient_name,
                     st.patient_birth_date, st.patient_birth_time, st.patient_sex, st.study_date,
                     st.study_time, st.accession_number, st.study_id,
                     st.referring_physician_name, st.study_description,
                     st.specific_character_set])
FROM (SELECT * FROM study_stats{suffix} FINAL) AS s
LEFT JOIN (SELECT * FROM study{suffix} FINAL) AS st ON st.study_instance_uid = s.study_instance_uid
SETTINGS output_format_json_escape_forward_slashes = 0;
