//! Support code shared by the integration tests (each test file declares `mod support;`).
#![allow(dead_code)]

pub mod cluster;
pub mod controller;
pub mod envoy;
pub mod playground;
pub mod policy_fixtures;
pub mod tools;
