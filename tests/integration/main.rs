//! Integration tests: churnd against real redis-server processes (one per test, on a free
//! port), the daemon running in-process or as the built binary.

mod dead_letters;
mod helpers;
mod http_api;
mod pipeline;
mod process;
mod resilience;
