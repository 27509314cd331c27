-- Append the CSV lines the reader rejected to the stage, one row per line, with the reader's reasons.
INSERT INTO stage
SELECT coalesce((SELECT max(row_no) FROM stage), 0) + row_number() OVER (ORDER BY line) AS row_no,
       to_json({'line': line, 'text': any_value(csv_line)})::VARCHAR AS raw,
       'unparseable row at line ' || line || ': ' || string_agg(DISTINCT error_message, '; ') AS parse_error
FROM csv_rejects
GROUP BY line
