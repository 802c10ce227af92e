//! Attack findings, end to end: each test reproduces one way a hostile client or a careless
//! backend hurt the gateway, at a size CI can afford, and checks that well-behaved clients and
//! backends are served within the documented deadlines. The next finding gets a file here.

#![allow(clippy::unwrap_used)] // tests: a failure should panic where it happens

#[path = "../common/mod.rs"]
mod common;

mod auth_callback;
mod compat;
mod frames;
mod handshakes;
mod push_body;
mod stat_memory;
