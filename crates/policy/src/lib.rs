//! Runtime authorisation with Cedar.
//!
//! This crate owns how Mayfly decides a grant at request time from who asks (the workload
//! and its verified claims), for what (target and action), why (purpose, task) and in which
//! context (time, source, break-glass, approvals):
//!
//! - the Cedar **schema** shipped with Mayfly ([`SCHEMA`], `schema/mayfly.cedarschema`) and
//!   the mapping of Mayfly's identities, targets and requests onto it ([`engine`]);
//! - **loading** a directory of `.cedar` policies with strict validation and located errors
//!   ([`load_dir`], [`PolicyLoadError`]), and the per-target index that keeps a decision to
//!   the handful of policies that can apply;
//! - the **decision** rules on top of Cedar's allow/deny: `@approval` and `@max_ttl`
//!   annotations, strictest-wins combination, explanations ([`CedarEngine`]);
//! - **hot reload** that keeps the previous set when a change is invalid
//!   ([`ReloadingEngine`]);
//! - table-driven **policy tests** for operators ([`run_test_file`]).
//!
//! # Decision rules
//!
//! - Default deny: with no matching permit the outcome is `deny`, determined by
//!   `default-deny`, with a reason naming principal, action and target.
//! - A matching `forbid` always wins (Cedar semantics); its id and `@reason("…")` are
//!   reported.
//! - Otherwise the matching permits *determine* the outcome and their annotations combine,
//!   **strictest wins**: approvals required = the maximum of their `@approval("n")` (absent
//!   means 0); TTL cap = the minimum of their `@max_ttl("15m")` (absent means no cap).
//!   More than 0 approvals gives `require_approval`, else `allow`.
//! - Policy ids are `@id("…")` when present, else `file.cedar:index` (0-based within the
//!   file). Ids must be unique. Invalid `@approval` / `@max_ttl` values, those annotations
//!   on a forbid, and near-miss spellings (`@approvals`, `@ttl`, …) are load errors.
//! - A forbid whose evaluation errors denies (fail closed).
//!
//! # Actions and token scopes
//!
//! The schema declares `connect`, `read`, `write`, `admin`. A target's declared actions
//! (token scopes such as `billing:read`) must also be declared in the schema to be usable:
//! either with a `*.cedarschema` fragment in the policy directory
//! (`action "billing:read" appliesTo { principal: [Workload], resource: [Target], context: RequestContext };`)
//! or with [`LoadOptions::extra_actions`]. Declaring rather than inferring from policy text
//! is deliberate: the validator then catches a misspelt action in a policy, and a request
//! for an undeclared action is a clear `BadRequest` instead of a silent deny.

#[doc(hidden)]
pub mod bench_support;
pub mod engine;
pub mod load;
pub mod reload;
pub mod testing;

pub use engine::{CedarEngine, GivenApprovals, ENGINE_NAME, MAX_TEXT_BYTES};
pub use load::{load_dir, LoadDiagnostic, LoadOptions, PolicyLoadError, SCHEMA};
pub use reload::{ReloadOutcome, ReloadingEngine};
pub use testing::{run_test_file, CaseResult, TestReport};

#[cfg(test)]
mod tests;
