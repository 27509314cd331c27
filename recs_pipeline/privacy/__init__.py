"""Personal data: erasure of one user (:mod:`.erasure`) and retention of old data (:mod:`.retention`).

Where user data lives and what each function removes is in docs/PRIVACY.md.
"""
