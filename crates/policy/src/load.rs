//! Loading a policy directory: schema assembly, parsing, strict validation, annotation
//! checks and the per-target index.
//!
//! Everything that can be wrong with a policy set is found here, at load time, and reported
//! with file, line and column, so that a bad edit never reaches a decision.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use cedar_policy::{
    Effect, Policy, PolicyId, PolicySet, ResourceConstraint, Schema, SchemaFragment,
    ValidationMode, Validator,
};
use mayfly_core::duration::Ttl;
use time::UtcOffset;

use crate::engine::CedarEngine;

/// The schema shipped with Mayfly; see `schema/mayfly.cedarschema`.
pub const SCHEMA: &str = include_str!("../schema/mayfly.cedarschema");

/// The actions every target kind may use; declared in [`SCHEMA`].
pub const BUILTIN_ACTIONS: [&str; 4] = ["connect", "read", "write", "admin"];

/// The most approvals a policy may require; more is surely a typo and could never be met.
pub const MAX_APPROVALS: u32 = 10;

/// Annotation keys that look like ours but are not: rejected so a typo cannot silently drop
/// an approval requirement or a TTL cap.
const MISSPELT_ANNOTATIONS: [(&str, &str); 9] = [
    ("approvals", "approval"),
    ("approver", "approvers"),
    ("approver_groups", "approvers"),
    ("require_approval", "approval"),
    ("requires_approval", "approval"),
    ("ttl", "max_ttl"),
    ("maxttl", "max_ttl"),
    ("max-ttl", "max_ttl"),
    ("maxTtl", "max_ttl"),
];

/// How policies are loaded and evaluated.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// The fixed offset in which `context.now.weekday` and `context.now.hour` are computed
    /// (business hours are local). No time-zone database: daylight saving is the operator's
    /// to handle by changing the offset.
    pub utc_offset: UtcOffset,
    /// Extra action names (token-target scopes such as `billing:read`) to declare in the
    /// schema, in addition to any `*.cedarschema` fragments in the directory.
    pub extra_actions: Vec<String>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            utc_offset: UtcOffset::UTC,
            extra_actions: Vec::new(),
        }
    }
}

/// One problem found while loading, located as precisely as Cedar allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadDiagnostic {
    /// File name (as given to the loader), or `<options>` for [`LoadOptions`] problems.
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column (in characters), when known.
    pub column: Option<usize>,
    /// The policy the problem is in, when it is in one.
    pub policy_id: Option<String>,
    /// Cedar's message (with its help text when it has one), or ours.
    pub message: String,
}

impl fmt::Display for LoadDiagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        if let Some(id) = &self.policy_id {
            write!(f, ": policy {id:?}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// A policy set that cannot be used; every problem found is listed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct PolicyLoadError {
    pub diagnostics: Vec<LoadDiagnostic>,
}

impl PolicyLoadError {
    fn single(file: impl Into<String>, message: impl Into<String>) -> Self {
        PolicyLoadError {
            diagnostics: vec![LoadDiagnostic {
                file: file.into(),
                line: None,
                column: None,
                policy_id: None,
                message: message.into(),
            }],
        }
    }
}

impl fmt::Display for PolicyLoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.diagnostics.len();
        write!(
            f,
            "policy set rejected ({n} problem{})",
            if n == 1 { "" } else { "s" }
        )?;
        for d in &self.diagnostics {
            write!(f, "\n  {d}")?;
        }
        Ok(())
    }
}

/// What the engine needs to know about one policy beyond its Cedar text.
#[derive(Clone, Debug)]
pub(crate) struct PolicyMeta {
    pub effect: Effect,
    /// `@approval`; 0 when absent.
    pub approvals: u32,
    /// `@max_ttl`.
    pub max_ttl: Option<Ttl>,
    /// `@reason`, shown to the caller when this policy denies.
    pub reason: Option<String>,
    /// `@approvers("db-owners, sre")`: the groups whose members may approve.
    pub approvers: Vec<String>,
}

/// Policies grouped by what their resource scope can match, so a decision only evaluates
/// the few that could apply to its target.
#[derive(Debug, Default)]
pub(crate) struct Index {
    /// Unconstrained (or `is`-only) resource scope: apply to every target.
    pub global: Vec<Policy>,
    /// `resource == Target::"x"` / `resource in Target::"x"`.
    pub by_target: HashMap<String, Vec<Policy>>,
    /// `resource in TargetGroup::"g"`.
    pub by_group: HashMap<String, Vec<Policy>>,
}

impl Index {
    fn insert(&mut self, policy: Policy) {
        let scope = match policy.resource_constraint() {
            ResourceConstraint::Eq(uid)
            | ResourceConstraint::In(uid)
            | ResourceConstraint::IsIn(_, uid) => Some(uid),
            ResourceConstraint::Any | ResourceConstraint::Is(_) => None,
        };
        let bucket = match scope {
            Some(uid) => {
                let id = uid.id().unescaped().to_string();
                match uid.type_name().to_string().as_str() {
                    "Target" => self.by_target.entry(id).or_default(),
                    "TargetGroup" => self.by_group.entry(id).or_default(),
                    // Validation rejects other types; keeping them global is the safe
                    // fallback should that ever change (evaluated, never skipped).
                    _ => &mut self.global,
                }
            }
            None => &mut self.global,
        };
        bucket.push(policy);
    }
}

/// The validated, indexed result of loading; the engine wraps it.
pub(crate) struct Loaded {
    pub schema: Schema,
    pub actions: HashSet<String>,
    pub meta: HashMap<PolicyId, PolicyMeta>,
    pub index: Index,
    pub policy_count: usize,
}

/// Loads every `*.cedar` (policies) and `*.cedarschema` (schema fragments) file in `dir`
/// (not recursive; other files such as `tests.toml` are ignored), in name order.
pub fn load_dir(dir: &Path, options: LoadOptions) -> Result<CedarEngine, PolicyLoadError> {
    let sources = read_dir_sources(dir)?;
    CedarEngine::from_sources(sources, options)
}

/// The policy and schema files of `dir` as (file name, text), sorted by name.
pub(crate) fn read_dir_sources(dir: &Path) -> Result<Vec<(String, String)>, PolicyLoadError> {
    let shown = dir.display().to_string();
    let entries = std::fs::read_dir(dir)
        .map_err(|e| PolicyLoadError::single(&shown, format!("cannot read directory: {e}")))?;
    let mut paths: Vec<PathBuf> = Vec::new();
    for entry in entries {
        let entry = entry
            .map_err(|e| PolicyLoadError::single(&shown, format!("cannot read directory: {e}")))?;
        let path = entry.path();
        if is_source(&path) && path.is_file() {
            paths.push(path);
        }
    }
    paths.sort();
    let mut out = Vec::with_capacity(paths.len());
    for path in paths {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = std::fs::read_to_string(&path)
            .map_err(|e| PolicyLoadError::single(&name, format!("cannot read file: {e}")))?;
        out.push((name, text));
    }
    Ok(out)
}

pub(crate) fn is_source(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("cedar" | "cedarschema")
    )
}

/// Parses, validates and indexes `sources` ((file name, text); names ending in
/// `.cedarschema` are schema fragments, all others policies).
pub(crate) fn load_sources(
    sources: Vec<(String, String)>,
    options: &LoadOptions,
) -> Result<Loaded, PolicyLoadError> {
    let mut diags = Vec::new();
    let (policy_files, schema_files): (Vec<_>, Vec<_>) = sources
        .into_iter()
        .partition(|(name, _)| !name.ends_with(".cedarschema"));

    let schema = build_schema(&schema_files, options, &mut diags);

    // Parse every file, give each policy its stable id and check its annotations.
    let mut files: Vec<(String, String, Vec<Policy>)> = Vec::new();
    let mut meta: HashMap<PolicyId, PolicyMeta> = HashMap::new();
    let mut seen_ids: HashMap<String, String> = HashMap::new();
    for (file, text) in policy_files {
        let pset = match PolicySet::from_str(&text) {
            Ok(p) => p,
            Err(errors) => {
                for e in errors.iter() {
                    diags.push(diagnostic(&file, &text, None, e));
                }
                continue;
            }
        };
        if let Some(t) = pset.templates().next() {
            diags.push(located(
                &file,
                &text,
                offset_of(&text, Some(t.to_cedar())),
                None,
                "policy templates (?principal / ?resource slots) are not supported; write static policies".into(),
            ));
            continue;
        }
        // `PolicySet::from_str` names policies `policy0`, `policy1`, … in file order; the
        // number is the policy's index in its file.
        let mut policies: Vec<(usize, Policy)> = pset
            .policies()
            .map(|p| {
                let index = p
                    .id()
                    .to_string()
                    .trim_start_matches("policy")
                    .parse()
                    .unwrap_or(usize::MAX);
                (index, p.clone())
            })
            .collect();
        policies.sort_by_key(|(i, _)| *i);
        let mut renamed = Vec::with_capacity(policies.len());
        for (index, policy) in policies {
            let id = match policy.annotation("id") {
                Some(id) if id.trim().is_empty() => {
                    diags.push(located(
                        &file,
                        &text,
                        offset_of(&text, policy.to_cedar()),
                        None,
                        "@id must not be empty".into(),
                    ));
                    continue;
                }
                Some(id) => id.to_string(),
                None => format!("{file}:{index}"),
            };
            let policy = policy.new_id(PolicyId::new(&id));
            if let Some(first) = seen_ids.insert(id.clone(), file.clone()) {
                diags.push(located(
                    &file,
                    &text,
                    offset_of(&text, policy.to_cedar()),
                    Some(&id),
                    format!(
                        "duplicate policy id (also used in {first}); policy ids must be unique"
                    ),
                ));
                continue;
            }
            match annotations(&policy) {
                Ok(m) => {
                    meta.insert(policy.id().clone(), m);
                    renamed.push(policy);
                }
                Err(message) => diags.push(located(
                    &file,
                    &text,
                    offset_of(&text, policy.to_cedar()),
                    Some(&id),
                    message,
                )),
            }
        }
        files.push((file, text, renamed));
    }

    let Some(schema) = schema else {
        return Err(PolicyLoadError { diagnostics: diags });
    };

    // Strict validation, file by file so that error locations map back to their file.
    let validator = Validator::new(schema.clone());
    let mut index = Index::default();
    let mut policy_count = 0;
    for (file, text, policies) in files {
        let pset = match PolicySet::from_policies(policies.iter().cloned()) {
            Ok(p) => p,
            Err(e) => {
                diags.push(located(&file, &text, None, None, e.to_string()));
                continue;
            }
        };
        let result = validator.validate(&pset, ValidationMode::Strict);
        for e in result.validation_errors() {
            diags.push(diagnostic(&file, &text, Some(e.policy_id().to_string()), e));
        }
        policy_count += policies.len();
        for p in policies {
            index.insert(p);
        }
    }

    if !diags.is_empty() {
        diags.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
        return Err(PolicyLoadError { diagnostics: diags });
    }
    let actions = schema
        .actions()
        .map(|a| a.id().unescaped().to_string())
        .collect();
    Ok(Loaded {
        schema,
        actions,
        meta,
        index,
        policy_count,
    })
}

/// The shipped schema plus the directory's fragments plus [`LoadOptions::extra_actions`].
fn build_schema(
    fragments: &[(String, String)],
    options: &LoadOptions,
    diags: &mut Vec<LoadDiagnostic>,
) -> Option<Schema> {
    let before = diags.len();
    let mut parsed = Vec::new();
    let mut add = |file: &str, text: &str, diags: &mut Vec<LoadDiagnostic>| {
        match SchemaFragment::from_cedarschema_str(text) {
            Ok((fragment, _warnings)) => parsed.push(fragment),
            Err(e) => diags.push(diagnostic(file, text, None, &e)),
        }
    };
    add("mayfly.cedarschema (built in)", SCHEMA, diags);
    for (file, text) in fragments {
        add(file, text, diags);
    }
    let extra: Vec<&String> = options
        .extra_actions
        .iter()
        .filter(|a| !BUILTIN_ACTIONS.contains(&a.as_str()))
        .collect();
    if !extra.is_empty() {
        let mut text = String::new();
        for action in extra {
            if action.is_empty()
                || action.contains(['"', '\\'])
                || action.contains(char::is_control)
            {
                diags.push(LoadDiagnostic {
                    file: "<options>".into(),
                    line: None,
                    column: None,
                    policy_id: None,
                    message: format!("extra action {action:?} is not a usable action name"),
                });
                continue;
            }
            text.push_str(&format!(
                "action \"{action}\" appliesTo {{ principal: [Workload], resource: [Target], context: RequestContext }};\n"
            ));
        }
        add("<options: extra_actions>", &text, diags);
    }
    if diags.len() > before {
        return None;
    }
    match Schema::from_schema_fragments(parsed) {
        Ok(s) => Some(s),
        Err(e) => {
            diags.push(LoadDiagnostic {
                file: "<schema>".into(),
                line: None,
                column: None,
                policy_id: None,
                message: with_help(&e),
            });
            None
        }
    }
}

/// Reads and checks Mayfly's annotations on one policy.
fn annotations(policy: &Policy) -> Result<PolicyMeta, String> {
    for (key, _) in policy.annotations() {
        if let Some((_, meant)) = MISSPELT_ANNOTATIONS.iter().find(|(k, _)| *k == key) {
            return Err(format!("unknown annotation @{key}; did you mean @{meant}?"));
        }
    }
    let effect = policy.effect();
    let approvals = match policy.annotation("approval") {
        None => 0,
        Some(v) => match v.trim().parse::<u32>() {
            Ok(n) if n <= MAX_APPROVALS => n,
            _ => {
                return Err(format!(
                    "@approval({v:?}) must be a whole number of approvals from 0 to {MAX_APPROVALS}"
                ))
            }
        },
    };
    let max_ttl = match policy.annotation("max_ttl") {
        None => None,
        Some(v) => match v.parse::<Ttl>() {
            Ok(t) if t.as_secs() > 0 => Some(t),
            Ok(_) => return Err(format!("@max_ttl({v:?}) must be longer than zero")),
            Err(e) => return Err(format!("@max_ttl({v:?}) is not a duration: {e}")),
        },
    };
    let approvers: Vec<String> = policy
        .annotation("approvers")
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|g| !g.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    if let Some(v) = policy.annotation("approvers") {
        if approvers.is_empty() {
            return Err(format!("@approvers({v:?}) names no group"));
        }
        if approvals == 0 {
            return Err(format!(
                "@approvers({v:?}) needs @approval(N): it says who approves, @approval how many"
            ));
        }
    }
    if effect == Effect::Forbid
        && (policy.annotation("approval").is_some() || max_ttl.is_some() || !approvers.is_empty())
    {
        return Err(
            "@approval, @approvers and @max_ttl only apply to permit policies; a forbid always denies"
                .into(),
        );
    }
    Ok(PolicyMeta {
        effect,
        approvals,
        max_ttl,
        reason: policy.annotation("reason").map(str::to_string),
        approvers,
    })
}

/// The byte offset where a policy starts in its file: its original text (which Cedar
/// keeps) found in the file.
fn offset_of(text: &str, policy_text: Option<String>) -> Option<usize> {
    policy_text.and_then(|p| text.find(p.trim()))
}

fn located(
    file: &str,
    text: &str,
    offset: Option<usize>,
    policy_id: Option<&str>,
    message: String,
) -> LoadDiagnostic {
    let (line, column) = match offset {
        Some(o) => {
            let (l, c) = line_col(text, o);
            (Some(l), Some(c))
        }
        None => (None, None),
    };
    LoadDiagnostic {
        file: file.to_string(),
        line,
        column,
        policy_id: policy_id.map(str::to_string),
        message,
    }
}

/// A diagnostic from a Cedar error, located by its first labelled span.
fn diagnostic(
    file: &str,
    text: &str,
    policy_id: Option<String>,
    error: &dyn miette::Diagnostic,
) -> LoadDiagnostic {
    let offset = error
        .labels()
        .and_then(|mut labels| labels.next())
        .map(|l| l.offset());
    let mut d = located(file, text, offset, None, with_help(error));
    d.policy_id = policy_id;
    d
}

fn with_help(error: &dyn miette::Diagnostic) -> String {
    match error.help() {
        Some(help) => format!("{error}; help: {help}"),
        None => error.to_string(),
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    (line, before[line_start..].chars().count() + 1)
}
