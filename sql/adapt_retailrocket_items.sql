-- RetailRocket item_category.csv -> contract catalog (every row of the file, none dropped).
--
-- Input: header ItemId,categoryid[,parentid] (the item -> category map taken from the public
-- item_properties file, property 'categoryid').
-- Parameters:
--   $path        the CSV file
--   $columns     the file's columns, all VARCHAR, in file order (checked against the header first)
--   $updated_at  the catalog's validity time (TIMESTAMPTZ): the source keeps no per-row time
-- Output: the contract item columns plus `pos`, the 1-based position of the row in the file.
-- price is NULL (not in the public data), available is true. Empty ids stay NULL (ingestion
-- quarantines them).
SELECT
    r.itemid AS item_id,
    r.categoryid AS category_id,
    CAST(NULL AS DOUBLE) AS price,
    true AS available,
    CAST($updated_at AS TIMESTAMPTZ) AS updated_at,
    r.ordinality AS pos
FROM read_csv(
    $path,
    header = true,
    auto_detect = false,
    delim = ',',
    quote = '"',
    escape = '"',
    columns = $columns
) WITH ORDINALITY AS r
