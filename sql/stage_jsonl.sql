-- Stage a JSON-lines file: every line kept verbatim; a line that is not a JSON object is marked.
-- $compression: 'none', 'gzip' or 'zstd' (from the file's name, recs_pipeline/data/landing.py).
CREATE OR REPLACE TEMP TABLE stage AS
SELECT row_number() OVER () AS row_no,
       line AS raw,
       CASE WHEN NOT json_valid(line) THEN 'unparseable row: not valid JSON'
            WHEN json_type(line::JSON) <> 'OBJECT' THEN 'unparseable row: not a JSON object' END AS parse_error
FROM read_csv($path, columns = {'line': 'VARCHAR'}, header = false, compression = $compression, delim = chr(1), quote = '',
              escape = '', auto_detect = false, strict_mode = false) AS t
WHERE line IS NOT NULL AND trim(line) <> ''
