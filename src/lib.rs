//! apiguard: declarative API security for Kubernetes.
//!
//! The crate is split into a pure core (`api`, `rules`, `render`, `identity`) that has no
//! Kubernetes client, clock or randomness passed implicitly, and thin edges (`cli`, `controller`,
//! `webhook`, and `certs` for every certificate loop) that fetch inputs, call the core and
//! write results.

#![warn(unreachable_pub)]

pub mod api;
pub mod audit;
pub mod catalog;
pub mod certs;
pub mod cli;
pub mod contract;
pub mod controller;
pub mod detect;
pub mod discovery;
pub mod identity;
pub mod intake;
pub mod kube_client;
pub mod lint;
pub mod manifest;
mod poll;
pub mod render;
pub mod reports;
pub mod rules;
pub mod sensor;
pub mod shared_state;

pub mod admin;
pub mod run;
pub mod webhook;
