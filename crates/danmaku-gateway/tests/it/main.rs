//! Integration tests of the gateway over real sockets: one test binary with
//! a module per area, all through the public WebSocket and HTTP surface.

mod auth;
mod burst;
mod closing;
mod cluster;
mod decoding;
mod deploy;
mod deploy_files;
mod handshake;
mod hardening;
mod limits;
mod live;
mod memory;
mod moderation;
mod observability;
mod pagination;
mod protocol;
mod proxies;
mod raw;
mod shutdown;
mod slow;
mod support;
mod tls;
