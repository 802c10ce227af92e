//! NATS (to be written).
