//! What the SQL database providers share: the target settings schema and statement
//! templates. The engine-neutral parts (write-ahead plan, usernames, passwords,
//! reconciliation's choice) are in [`crate::plan`]; the template syntax in
//! [`crate::template`].
//!
//! Nothing here talks to a database; [`crate::conn`] owns connections and error mapping.
//!
//! # Target settings (`target.settings`, non-secret)
//!
//! | key | type | default |
//! | --- | --- | --- |
//! | `creation_statements` | list of SQL templates | engine default (see each provider) |
//! | `grants` | map action -> list of SQL templates | required: one entry per target action |
//! | `revocation_statements` | list of SQL templates | engine default (drop the user) |
//! | `username_template` | template | `mayfly_{{identity}}_{{rand}}` |
//! | `password_length` | integer 16..=128 | 32 |
//! | `host`, `port`, `database` | string, integer, string | taken from the admin URL |
//! | `timeout_seconds` | integer 1..=600 | 30 (connect plus the whole operation) |
//!
//! Unknown keys are rejected, so a typo (`grant` for `grants`) fails when the target is
//! stored rather than when the first credential is issued.
//!
//! # Placeholders
//!
//! `{{name}}` (the generated username), `{{password}}`, `{{expiration}}` (lease expiry,
//! RFC 3339 UTC), `{{identity}}` and `{{action}}` (reduced to `[a-z0-9_]`), `{{rand}}`
//! (random `[a-z0-9]`, usernames only) and `{{host}}` (MariaDB revocation: the account's
//! host part). Templates are trusted operator configuration; only generated or validated
//! values are substituted, so a placeholder can never inject SQL.
//!
//! `{{password}}` is replaced by the engine's *verifier* of the issued password
//! ([`crate::verifier`]), never by the password itself, so the plaintext never reaches the
//! database server's statement log. PostgreSQL stores a verifier given as the password of
//! `CREATE ROLE … PASSWORD '{{password}}'` as it is; MariaDB needs it placed as a hash,
//! `IDENTIFIED BY PASSWORD '{{password}}'` (checked when the target is stored).

use std::collections::BTreeMap;
use std::time::Duration;

use mayfly_core::model::Target;
use mayfly_core::provider::ProviderError;
use serde::Deserialize;
use time::OffsetDateTime;

use crate::plan::{Basics, NameRules, UsernameTemplate};
use crate::template::{Template, Var};

pub const DEFAULT_TIMEOUT_SECONDS: u64 = 30;
pub const MAX_TIMEOUT_SECONDS: u64 = 600;

/// What differs between engines in the shared settings.
#[derive(Debug)]
pub struct EngineSpec {
    pub kind: &'static str,
    /// Longest username the engine accepts, in bytes (names are ASCII).
    pub max_username: usize,
    pub default_creation: &'static [&'static str],
    pub default_revocation: &'static [&'static str],
    /// Placeholders revocation statements may use.
    pub revocation_vars: &'static [Var],
    pub default_port: u16,
    /// URL schemes accepted for the admin secret.
    pub schemes: &'static [&'static str],
    /// Username prefixes the engine reserves (`pg_` on PostgreSQL).
    pub reserved_prefixes: &'static [&'static str],
    /// Keywords one of which must come right before `'{{password}}'` for the engine to
    /// take the verifier as a hash (MariaDB: `PASSWORD`, `USING`); empty where any
    /// password literal accepts a verifier (PostgreSQL).
    pub verifier_after: &'static [&'static str],
}

impl EngineSpec {
    /// The engine's rules for account names.
    pub const fn names(&self) -> NameRules {
        NameRules {
            kind: self.kind,
            max_len: self.max_username,
            reserved_prefixes: self.reserved_prefixes,
        }
    }
}

/// The write-ahead plan for a lease on `request`'s target: the username from the
/// target's own template (see [`crate::plan::plan_username`]).
pub fn plan_for(
    spec: &EngineSpec,
    request: &mayfly_core::provider::IssueRequest<'_>,
) -> Result<serde_json::Value, ProviderError> {
    let config = Config::from_target(spec, request.target.target)?;
    crate::plan::plan_username(&config.username, request)
}

/// The settings as written in the target definition.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DbSettings {
    #[serde(default)]
    pub creation_statements: Option<Vec<String>>,
    #[serde(default)]
    pub grants: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub revocation_statements: Option<Vec<String>>,
    #[serde(default)]
    pub username_template: Option<String>,
    #[serde(default)]
    pub password_length: Option<usize>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub database: Option<String>,
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
    // Read by runtime policy (Cedar maps them onto the target entity), not by the
    // provider; listed so they are not rejected as unknown keys.
    #[serde(default)]
    pub environment: Option<String>,
    #[serde(default)]
    pub sensitivity: Option<String>,
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub groups: Option<Vec<String>>,
}

/// Settings after validation, templates parsed.
#[derive(Debug)]
pub struct Config {
    pub creation: Vec<Template>,
    pub grants: BTreeMap<String, Vec<Template>>,
    pub revocation: Vec<Template>,
    pub username: UsernameTemplate,
    pub password_length: usize,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub database: Option<String>,
    pub timeout: Duration,
}

fn bad(msg: impl Into<String>) -> ProviderError {
    ProviderError::BadSettings(msg.into())
}

impl Config {
    /// Parses and checks `target.settings` for `spec`'s engine, including that every
    /// action of the target has a `grants` entry and that no entry names an unknown action.
    pub fn from_target(spec: &EngineSpec, target: &Target) -> Result<Config, ProviderError> {
        if target.kind != spec.kind {
            return Err(bad(format!(
                "target kind is {:?}, this provider issues {:?}",
                target.kind, spec.kind
            )));
        }
        let settings: DbSettings = match &target.settings {
            serde_json::Value::Null => DbSettings::default(),
            v => serde_json::from_value(v.clone()).map_err(|e| bad(e.to_string()))?,
        };

        const STATEMENT_VARS: &[Var] = &[
            Var::Name,
            Var::Password,
            Var::Expiration,
            Var::Identity,
            Var::Action,
        ];
        let parse_list = |what: &str, list: &[String], vars: &[Var]| {
            list.iter()
                .enumerate()
                .map(|(i, s)| {
                    if s.trim().is_empty() {
                        return Err(bad(format!("{what}[{i}] is empty")));
                    }
                    Template::parse(s, vars).map_err(|e| bad(format!("{what}[{i}]: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()
        };

        let creation = match &settings.creation_statements {
            Some(list) if list.is_empty() => {
                return Err(bad("creation_statements must not be empty"))
            }
            Some(list) => parse_list("creation_statements", list, STATEMENT_VARS)?,
            None => parse_list(
                "creation_statements",
                &to_owned(spec.default_creation),
                STATEMENT_VARS,
            )?,
        };
        if !creation.iter().any(|t| t.uses(Var::Name)) {
            return Err(bad("creation_statements must use {{name}}"));
        }
        if !creation.iter().any(|t| t.uses(Var::Password)) {
            return Err(bad(
                "creation_statements must use {{password}} (the issued password would not work)",
            ));
        }

        let revocation = match &settings.revocation_statements {
            Some(list) if list.is_empty() => {
                return Err(bad("revocation_statements must not be empty"))
            }
            Some(list) => parse_list("revocation_statements", list, spec.revocation_vars)?,
            None => parse_list(
                "revocation_statements",
                &to_owned(spec.default_revocation),
                spec.revocation_vars,
            )?,
        };

        let mut grants = BTreeMap::new();
        for (action, list) in &settings.grants {
            if !target.actions.iter().any(|a| a == action) {
                return Err(bad(format!(
                    "grants names action {action:?}, which the target does not offer"
                )));
            }
            grants.insert(
                action.clone(),
                parse_list(&format!("grants.{action}"), list, STATEMENT_VARS)?,
            );
        }
        if !spec.verifier_after.is_empty()
            && creation
                .iter()
                .chain(grants.values().flatten())
                .any(|t| !t.password_after(spec.verifier_after))
        {
            return Err(bad(format!(
                "{{{{password}}}} stands for the password's hash on {}: write it as {} '{{{{password}}}}'",
                spec.kind,
                spec.verifier_after.join(" '{{password}}' or ")
            )));
        }
        for action in &target.actions {
            if !grants.contains_key(action) {
                return Err(bad(format!(
                    "grants has no entry for action {action:?} (use an empty list for none)"
                )));
            }
        }

        let basics = Basics::check(
            &spec.names(),
            settings.username_template.as_deref(),
            settings.password_length,
            settings.timeout_seconds,
            settings.host.as_deref(),
            settings.port,
        )?;
        if let Some(d) = &settings.database {
            if d.is_empty() || d.chars().any(|c| c.is_control()) {
                return Err(bad("database must be a non-empty name"));
            }
        }
        Ok(Config {
            creation,
            grants,
            revocation,
            username: basics.username,
            password_length: basics.password_length,
            host: settings.host,
            port: settings.port,
            database: settings.database,
            timeout: basics.timeout,
        })
    }

    /// The grant statements for `action`.
    pub fn grants_for(&self, action: &str) -> Result<&[Template], ProviderError> {
        self.grants
            .get(action)
            .map(Vec::as_slice)
            .ok_or_else(|| bad(format!("grants has no entry for action {action:?}")))
    }
}

fn to_owned(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// The expiry as placed in `{{expiration}}` and `VALID UNTIL`: RFC 3339 in UTC, whole seconds.
pub fn format_expiration(t: OffsetDateTime) -> Result<String, ProviderError> {
    let t = t
        .to_offset(time::UtcOffset::UTC)
        .replace_nanosecond(0)
        .map_err(|e| ProviderError::Failed(format!("expiry: {e}")))?;
    t.format(&time::format_description::well_known::Rfc3339)
        .map_err(|e| ProviderError::Failed(format!("expiry: {e}")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use mayfly_core::provider::{ReconcileReport, Recorded};
    use mayfly_core::secret::SecretString;

    use super::*;
    use crate::plan::*;
    use crate::template::Values;

    const SPEC: EngineSpec = EngineSpec {
        kind: "postgres",
        max_username: 30,
        default_creation: &["CREATE ROLE \"{{name}}\" PASSWORD '{{password}}'"],
        default_revocation: &["DROP ROLE \"{{name}}\""],
        revocation_vars: &[Var::Name],
        default_port: 5432,
        schemes: &["postgres"],
        reserved_prefixes: &["pg_"],
        verifier_after: &[],
    };

    fn target(settings: serde_json::Value) -> Target {
        Target {
            name: "db".into(),
            kind: "postgres".into(),
            actions: vec!["read".into(), "write".into()],
            default_ttl: "1h".parse().unwrap(),
            max_ttl: "1h".parse().unwrap(),
            allow: vec![],
            settings,
            created_at: OffsetDateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn templates_parse_and_render() {
        let t =
            Template::parse("A {{ name }} B {{password}}", &[Var::Name, Var::Password]).unwrap();
        let pw = SecretString::new("pw".into());
        let out = t.render(&Values {
            name: "u",
            password: Some(&pw),
            ..Values::default()
        });
        assert_eq!(out.expose(), "A u B pw");
        assert!(Template::parse("{{nope}}", &[Var::Name]).is_err());
        assert!(Template::parse("{{name", &[Var::Name]).is_err());
        assert!(Template::parse("x }}", &[Var::Name]).is_err());
        assert!(Template::parse("{{password}}", &[Var::Name]).is_err());
    }

    #[test]
    fn settings_validation() {
        let ok = json(r#"{"grants": {"read": ["GRANT x TO \"{{name}}\""], "write": []}}"#);
        let c = Config::from_target(&SPEC, &target(ok)).unwrap();
        assert_eq!(c.password_length, 32);
        assert_eq!(c.username.prefix(), "mayfly_");
        for bad in [
            r#"{"grants": {"read": []}}"#,
            r#"{"grants": {"read": [], "write": [], "admin": []}}"#,
            r#"{"grants": {"read": [], "write": []}, "grant": {}}"#,
            r#"{"grants": {"read": [], "write": []}, "password_length": 8}"#,
            r#"{"grants": {"read": [], "write": []}, "username_template": "{{identity}}_{{rand}}"}"#,
            r#"{"grants": {"read": [], "write": []}, "username_template": "mayfly_{{identity}}"}"#,
            r#"{"grants": {"read": [], "write": []}, "username_template": "Mayfly_{{rand}}"}"#,
            r#"{"grants": {"read": [], "write": []}, "username_template": "pg_{{rand}}"}"#,
            r#"{"grants": {"read": [], "write": []}, "username_template": "a_very_long_prefix_indeed_{{rand}}"}"#,
            r#"{"grants": {"read": [], "write": []}, "creation_statements": ["CREATE ROLE x"]}"#,
            r#"{"grants": {"read": [], "write": []}, "creation_statements": []}"#,
            r#"{"grants": {"read": ["{{rand}}"], "write": []}}"#,
            r#"{"grants": {"read": [], "write": []}, "host": "a/b"}"#,
            r#"{"grants": {"read": [], "write": []}, "timeout_seconds": 0}"#,
        ] {
            assert!(
                Config::from_target(&SPEC, &target(json(bad))).is_err(),
                "{bad}"
            );
        }
        let mut t = target(json(r#"{"grants": {"read": [], "write": []}}"#));
        t.kind = "mariadb".into();
        assert!(Config::from_target(&SPEC, &t).is_err());
    }

    #[test]
    fn mariadb_needs_the_password_placed_as_a_hash() {
        let maria = crate::mariadb::SPEC;
        let with = |creation: &str, grant: &str| {
            let mut t = target(serde_json::json!({
                "creation_statements": [creation],
                "grants": {"read": [grant], "write": []}
            }));
            t.kind = "mariadb".into();
            Config::from_target(&maria, &t)
        };
        let g = "GRANT SELECT ON db.* TO '{{name}}'@'%'";
        for ok in [
            "CREATE USER '{{name}}'@'%' IDENTIFIED BY PASSWORD '{{password}}'",
            "CREATE USER '{{name}}'@'%' identified by password   '{{password}}' ACCOUNT LOCK",
            "CREATE USER '{{name}}'@'%' IDENTIFIED VIA mysql_native_password USING '{{password}}'",
        ] {
            assert!(with(ok, g).is_ok(), "{ok}");
        }
        for bad in [
            "CREATE USER '{{name}}'@'%' IDENTIFIED BY '{{password}}'",
            "CREATE USER '{{name}}'@'%' IDENTIFIED BY PASSWORD {{password}}",
            "CREATE USER '{{name}}'@'%' IDENTIFIED BY NOPASSWORD '{{password}}'",
        ] {
            let e = with(bad, g).unwrap_err().to_string();
            assert!(e.contains("PASSWORD '{{password}}'"), "{bad}: {e}");
        }
        let ok = "CREATE USER '{{name}}'@'%' IDENTIFIED BY PASSWORD '{{password}}'";
        assert!(with(
            ok,
            "GRANT SELECT ON db.* TO '{{name}}'@'%' IDENTIFIED BY '{{password}}'"
        )
        .is_err());
        assert!(with(crate::mariadb::SPEC.default_creation[0], g).is_ok());
    }

    #[test]
    fn usernames_fit_and_are_recognised() {
        let u = UsernameTemplate::parse(DEFAULT_USERNAME_TEMPLATE, &SPEC.names()).unwrap();
        let name = u.render_with(
            "Billing-Deployer.v2-with-a-very-long-name",
            "read",
            "abcdefghij",
        );
        assert_eq!(name.len(), 30);
        assert_eq!(name, "mayfly_billing_depl_abcdefghij");
        assert!(u.accepts(&name));
        let g = u.generate("svc", "read").unwrap();
        assert!(
            u.accepts(&g) && g.len() == "mayfly_svc_".len() + RAND_LEN,
            "{g}"
        );
        assert_ne!(g, u.generate("svc", "read").unwrap());
        assert!(!u.accepts("other_x"));
        assert!(!u.accepts("mayfly_x\"; drop"));
        let state = |n: &str| serde_json::json!({ "username": n });
        assert!(username_from_state(&state("other_abc"), &u, StateUse::Fresh).is_err());
        assert!(username_from_state(&state("other_abc"), &u, StateUse::Existing).is_ok());
        assert!(username_from_state(&state("x\"y"), &u, StateUse::Existing).is_err());
        assert!(username_from_state(&serde_json::Value::Null, &u, StateUse::Existing).is_err());
        let a =
            UsernameTemplate::parse("mf_{{action}}_{{identity}}_{{rand}}", &SPEC.names()).unwrap();
        let n = a.render_with("identity-that-is-long", "read", "0123456789");
        assert_eq!(n.len(), 30);
        assert!(n.starts_with("mf_read_identi"), "{n}");
    }

    #[test]
    fn passwords_are_alphanumeric_and_distinct() {
        let a = generate_password(32).unwrap();
        let b = generate_password(32).unwrap();
        assert_eq!(a.expose().len(), 32);
        assert!(a.expose().chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a.expose(), b.expose());
        // every character class shows up over enough draws (no truncated alphabet)
        let many = generate_password(128).unwrap();
        assert!(many.expose().chars().any(|c| c.is_ascii_uppercase()));
        assert!(many.expose().chars().any(|c| c.is_ascii_digit()));
    }

    #[tokio::test]
    async fn only_recorded_ended_and_marked_accounts_are_removable() {
        let ledger = crate::conformance::MapLedger(BTreeMap::from([
            ("mf_live".to_string(), Recorded::Live),
            ("mf_ended".to_string(), Recorded::Ended),
            ("mf_ended_unmarked".to_string(), Recorded::Ended),
        ]));
        let c = |name: &str, marked| Candidate {
            name: name.into(),
            marked,
        };
        let mut report = ReconcileReport::default();
        let remove = removable(
            &ledger,
            vec![
                c("mf_live", true),
                c("mf_ended", true),
                c("mf_ended_unmarked", false),
                c("mf_by_hand", true),
                c("mf_other_target", false),
            ],
            &mut report,
        )
        .await
        .unwrap();
        assert_eq!(remove, ["mf_ended"]);
        assert_eq!(report.found, 5);
        assert_eq!(
            report.unknown,
            ["mf_ended_unmarked", "mf_by_hand", "mf_other_target"]
        );
    }

    #[test]
    fn expiration_format() {
        let t = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap()
            + time::Duration::milliseconds(500);
        assert_eq!(format_expiration(t).unwrap(), "2023-11-14T22:13:20Z");
    }

    fn json(s: &str) -> serde_json::Value {
        serde_json::from_str(s).unwrap()
    }
}
