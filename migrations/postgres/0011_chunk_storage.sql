-- Recording chunks are stored out of line and never compressed again by
-- PostgreSQL: portvakt already stores each chunk as an LZ4 block when that
-- shrinks it, and as it is only when LZ4 cannot (random or compressed data,
-- base64 of it). With the default storage (EXTENDED) PostgreSQL ran pglz
-- over every chunk of about 1 MiB before giving up on most of them, which
-- cost it more CPU than everything portvakt does to record the same bytes
-- and capped a recorded session at about 100 MB/s on the benchmark's host
-- (docs/BENCHMARKS.md "Recorded targets (recordings on PostgreSQL)").
-- Rows stored before keep their form; new rows are stored as they come.
ALTER TABLE recording_chunks ALTER COLUMN data SET STORAGE EXTERNAL;
