//! Spool and upload of results (to come).
