//! Integration tests of the gateway over real sockets: one test binary with
//! a module per area, all through the public WebSocket and HTTP surface.

mod burst;
mod cluster;
mod hardening;
mod limits;
mod observability;
mod protocol;
mod shutdown;
mod slow;
mod support;
