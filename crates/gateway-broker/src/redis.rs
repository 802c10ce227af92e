//! Redis pub/sub (to be written).
