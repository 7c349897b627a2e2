//! Helpers for codex-store's cross-crate and multi-process tests: the fake token endpoint, JWT and auth.json fixtures.

pub mod cli_support;
pub mod fake_idp;
pub mod jwt;
pub mod store_fixtures;
