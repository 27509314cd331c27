-- Stage a CSV file (with header) as one JSON text per row; lines the reader cannot parse
-- go to the csv_rejects temp table (see stage_csv_rejects.sql), not away.
-- $compression: 'none', 'gzip' or 'zstd' (from the file's name, recs_pipeline/data/landing.py).
CREATE OR REPLACE TEMP TABLE stage AS
SELECT row_number() OVER () AS row_no, to_json(t)::VARCHAR AS raw, NULL::VARCHAR AS parse_error
FROM read_csv($path, header = true, all_varchar = true, compression = $compression, store_rejects = true,
              rejects_table = 'csv_rejects', rejects_scan = 'csv_reject_scans') AS t
