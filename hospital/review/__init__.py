"""The review station (`medge review`): clinicians confirm or reject findings, and the hospital sees how each
model agrees with them.

- `db`: the review tables (users, sessions, verdicts, audit log, a read-only index of the findings) in the
  receiver's own database, created and migrated at start; the findings table is only ever read.
- `auth`: argon2 passwords, server-side sessions, CSRF tokens, lockout.
- `stats`: agreement, PPV and (where the labels allow it) sensitivity per model, site and device, over time.
- `charts`: the dashboard's plots as inline SVG, the report's as a PNG (OpenCV).
- `app`: the Starlette application (server-rendered Jinja2 pages) and its access guard.
- `commands`: what `medge review serve|report|export|add-user` run.

Needs the `hospital` extra (starlette, jinja2, uvicorn, argon2-cffi).
"""
