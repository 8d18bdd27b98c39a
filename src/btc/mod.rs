//! Bitcoin P2P handshakes (v1 and BIP324 v2) over any AsyncRead + AsyncWrite.
