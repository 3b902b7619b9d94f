//! Credential providers for external systems (in progress).
