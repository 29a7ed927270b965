//! API discovery: the inventory of the endpoints a gateway serves, learned from what it sees
//! (docs/discovery.md). A pure core: no I/O, no clock (times come with the observations).
//!
//! - [`template`]: declared templates matched first, otherwise id-like segments become
//!   `{param}`; parameter types.
//! - [`declared`]: the endpoints a policy declares (its rules, its OpenAPI document).
//! - [`sensitive`]: the classes of sensitive data in a response body, counted, never kept.
//! - [`inventory`]: the bounded per-policy inventory and its report (shadow and zombie
//!   endpoints).
//! - [`access_log`]: one gateway access-log line as an [`Observation`] (`apiguard discover`).
//! - [`openapi`]: an OpenAPI 3.1 skeleton of a report.
//! - [`push`]: the inventory a sensor pushes to the operator (the wire format).
//!
//! The sensor calls it per exchange: [`sensitive::classify`] on the response body it scanned,
//! then [`Inventory::observe`] with an [`Observation`], and serves [`Inventory::report`].

pub mod access_log;
pub mod declared;
pub mod inventory;
pub mod openapi;
pub mod push;
pub mod sensitive;
pub mod template;
mod timestamp;

pub use declared::Declared;
pub use inventory::{EndpointReport, Inventory, MAX_ENDPOINTS, Report};
pub use sensitive::{Sensitive, SensitiveClass, classify};
pub use template::ParamType;

/// One request as discovery sees it. Borrowed: an observation costs no allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation<'a> {
    /// `GET`, as the client sent it.
    pub method: &'a str,
    /// The request path as sent (`/users/123?x=1`): the query string is ignored.
    pub path: &'a str,
    /// The response status (0: none, e.g. the client went away).
    pub status: u16,
    /// The request had a caller identity: a verified JWT subject, an API-key client id or a
    /// client certificate.
    pub authenticated: bool,
    /// The response's `content-type` (parameters such as `charset` are dropped).
    pub content_type: Option<&'a str>,
    /// When the request started, Unix milliseconds.
    pub at_unix_ms: i64,
    /// The sensitive data classes in the response body ([`classify`]); none from a log.
    pub sensitive: Sensitive,
}
