//! The NAT lab: network namespaces joined by user-space NAT emulators (Linux only).
