//! The engines the conformance suite runs against (`mayfly_providers::conformance`).

pub mod mariadb;
pub mod pg;
pub mod rabbitmq;
pub mod redis;
