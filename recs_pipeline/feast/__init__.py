"""The bridge to Feast: apply and materialise, the guarded online store, the online refresh and parity checks."""
