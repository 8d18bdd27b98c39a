//! TCP NAT classification: probing I/O against echo servers; the verdict logic is pure.
