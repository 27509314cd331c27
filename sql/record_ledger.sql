-- One ledger row per file content; rows_read = loaded + quarantined + duplicates.
INSERT INTO ingest_ledger VALUES ($file_hash, $file_name, $kind, $bytes, $rows_read, $loaded,
                                  $quarantined, $duplicates, $status, $error, $now)
