//! Text templates with `{{placeholder}}`s, parsed once so rendering cannot fail: the
//! statements of the SQL providers and every provider's username template use them.
//! Values are never escaped here; each producer validates what it substitutes.

use mayfly_core::secret::SecretString;

/// A placeholder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Var {
    Name,
    Password,
    Expiration,
    Identity,
    Action,
    Rand,
    Host,
}

impl Var {
    fn parse(s: &str) -> Option<Var> {
        Some(match s {
            "name" => Var::Name,
            "password" => Var::Password,
            "expiration" => Var::Expiration,
            "identity" => Var::Identity,
            "action" => Var::Action,
            "rand" => Var::Rand,
            "host" => Var::Host,
            _ => return None,
        })
    }
    fn as_str(self) -> &'static str {
        match self {
            Var::Name => "name",
            Var::Password => "password",
            Var::Expiration => "expiration",
            Var::Identity => "identity",
            Var::Action => "action",
            Var::Rand => "rand",
            Var::Host => "host",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Piece {
    Lit(String),
    Var(Var),
}

/// A text with `{{placeholder}}`s, parsed once so rendering cannot fail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    pub(crate) pieces: Vec<Piece>,
}

/// Values substituted into a template; each must already be validated by its producer.
#[derive(Default)]
pub struct Values<'a> {
    pub name: &'a str,
    pub password: Option<&'a SecretString>,
    pub expiration: &'a str,
    pub identity: &'a str,
    pub action: &'a str,
    pub rand: &'a str,
    pub host: &'a str,
}

impl Template {
    pub fn parse(text: &str, allowed: &[Var]) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                pieces.push(Piece::Lit(rest[..start].to_string()));
            }
            let after = &rest[start + 2..];
            let end = after
                .find("}}")
                .ok_or_else(|| "unclosed {{ placeholder".to_string())?;
            let name = after[..end].trim();
            let var =
                Var::parse(name).ok_or_else(|| format!("unknown placeholder {{{{{name}}}}}"))?;
            if !allowed.contains(&var) {
                return Err(format!(
                    "placeholder {{{{{name}}}}} is not available here (allowed: {})",
                    allowed
                        .iter()
                        .map(|v| format!("{{{{{}}}}}", v.as_str()))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            pieces.push(Piece::Var(var));
            rest = &after[end + 2..];
        }
        if rest.contains("}}") {
            return Err("stray }} without {{".into());
        }
        if !rest.is_empty() {
            pieces.push(Piece::Lit(rest.to_string()));
        }
        Ok(Template { pieces })
    }

    pub fn uses(&self, var: Var) -> bool {
        self.pieces.contains(&Piece::Var(var))
    }

    /// Whether every `{{password}}` is a quoted literal right after one of `keywords`
    /// (case-insensitive, any whitespace in between): `PASSWORD '{{password}}'`.
    pub fn password_after(&self, keywords: &[&str]) -> bool {
        self.pieces.iter().enumerate().all(|(i, p)| {
            if *p != Piece::Var(Var::Password) {
                return true;
            }
            let before = match i.checked_sub(1).and_then(|j| self.pieces.get(j)) {
                Some(Piece::Lit(s)) => s.as_str(),
                _ => return false,
            };
            let after_quoted =
                matches!(self.pieces.get(i + 1), Some(Piece::Lit(s)) if s.starts_with('\''));
            let Some(head) = before.strip_suffix('\'') else {
                return false;
            };
            let head = head.trim_end().to_ascii_uppercase();
            after_quoted
                && keywords.iter().any(|k| {
                    head.strip_suffix(&k.to_ascii_uppercase())
                        .is_some_and(|rest| rest.is_empty() || rest.ends_with(char::is_whitespace))
                })
        })
    }

    /// Renders into a [`SecretString`]: a statement may carry the password, so it is
    /// zeroized on drop like any other secret and never printed.
    pub fn render(&self, v: &Values<'_>) -> SecretString {
        let mut out = String::new();
        for p in &self.pieces {
            match p {
                Piece::Lit(s) => out.push_str(s),
                Piece::Var(Var::Name) => out.push_str(v.name),
                Piece::Var(Var::Password) => {
                    if let Some(p) = v.password {
                        out.push_str(p.expose())
                    }
                }
                Piece::Var(Var::Expiration) => out.push_str(v.expiration),
                Piece::Var(Var::Identity) => out.push_str(v.identity),
                Piece::Var(Var::Action) => out.push_str(v.action),
                Piece::Var(Var::Rand) => out.push_str(v.rand),
                Piece::Var(Var::Host) => out.push_str(v.host),
            }
        }
        SecretString::new(out)
    }
}
