"""DICOM output at the hospital: each stored finding as a TID 1500 Structured Report (and its overlay as a
Secondary Capture) in the *original* study, written to files (`medge hospital dicom`) or sent to the PACS
(`medge hospital forward`). One stage per module:

- `uids`: deterministic UIDs from the finding id (a resend overwrites instead of duplicating)
- `study`: the patient/study attributes the objects carry (from the PACS, or empty offline)
- `sr`: finding -> SR dataset (highdicom Comprehensive 3D SR, TID 1500 Measurement Report)
- `sc`: overlay PNG -> Secondary Capture dataset
- `objects`: both for one stored finding, and writing them to files atomically
- `pacs`: C-FIND (patient/study attributes) and C-STORE SCU, with timeouts (pynetdicom)
- `forwarder`: the durable queue that follows the receiver's store and sends to the PACS

docs/HOSPITAL.md ("DICOM output and the PACS forwarder") describes what is written and why.
"""
