//! Support code shared by the test tiers (`tests/{offline,cluster,e2e}/main.rs` declare it with
//! `#[path = "../support/mod.rs"] mod support;`) and by the benchmarks.
#![allow(dead_code)]

pub mod cluster;
pub mod controller;
pub mod envoy;
pub mod isolation;
pub mod node;
pub mod playground;
pub mod policy_fixtures;
pub mod redis;
pub mod tools;
pub mod webhook;
