//! Every long-running certificate loop of the operator, and the one TLS resolver they feed.
//! The decisions are pure and live in `crate::identity`; this module does the I/O (apiserver
//! reads, writes and watches, PEM files).
//!
//! - [`ca`]: the operator CA: race-free bootstrap ([`ensure_ca`]) or a user-supplied CA
//!   ([`load_ca`]).
//! - [`ca_rotation`]: the leader's CA rotation driver ([`drive_ca_rotation`]).
//! - [`client_auth`]: [`SwappableClientRoots`], optional client certificates checked against
//!   the operator CA's roots (swapped in place), and the SPIFFE ID of a presented one.
//! - [`resolver`]: [`SwappableCert`], the rustls resolver of the webhook, swapped in place.
//! - [`files`]: [`ReloadingCert`], the serving certificate from PEM files, re-read by polling.
//! - [`serving_secret`]: the operator-managed serving certificate Secret.
//! - [`ca_bundle`]: the `caBundle` of the ValidatingWebhookConfiguration.
//! - [`serving`]: the serving-certificate loop every replica runs ([`serving::run`]).
//! - `watch`: the serving loop's watch of an object by name.

pub mod ca;
pub mod ca_bundle;
pub mod ca_rotation;
pub mod client_auth;
pub mod files;
pub mod resolver;
pub mod serving;
pub mod serving_secret;
#[cfg(test)]
mod test_support;
mod watch;

pub use ca::{CaOrigin, CaSecretError, ensure_ca, load_ca};
pub use ca_rotation::drive_ca_rotation;
pub use client_auth::{SwappableClientRoots, spiffe_id_of};
pub use files::ReloadingCert;
pub use resolver::{SwappableCert, TlsError, certified_key, provider};
