"""The bridge to Feast: apply and materialise, the entity-row SQLite online store, the online refresh and parity checks."""
