-- Stage a parquet file as one JSON text per row, in file order.
CREATE OR REPLACE TEMP TABLE stage AS
SELECT row_number() OVER () AS row_no, to_json(t)::VARCHAR AS raw, NULL::VARCHAR AS parse_error
FROM read_parquet($path) AS t
