-- How each recording chunk is stored: 'lz4' (an LZ4 block, as every chunk
-- was before) or 'none' (the content as it is: output that LZ4 cannot
-- shrink, such as compressed or random data and base64 of it, is no longer
-- compressed for nothing; docs/BENCHMARKS.md "Recorded targets").
ALTER TABLE recording_chunks ADD COLUMN codec TEXT NOT NULL DEFAULT 'lz4';
