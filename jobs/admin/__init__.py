"""The operator's side of the job domain: queries and actions behind the admin dashboard and
``/metrics``. Plain functions that take the session as a keyword argument; no HTTP here."""
