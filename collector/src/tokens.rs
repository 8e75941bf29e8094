//! Device tokens: which bearer token belongs to which device.
//!
//! Invariants: a token belongs to exactly one device (a token given to two
//! devices is refused when the table is built, since one of them would be
//! locked out for good); device names follow [`sluice_protocol::check_name`];
//! a running collector's table ([`TokenTable`]) is replaced whole, never
//! edited in place.

use sluice_serve::constant_time_eq;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// Why a token table cannot be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// A `DEVICE=TOKEN` pair is malformed.
    #[error("`{pair}`: {problem}")]
    Malformed {
        /// The pair as given (token hidden).
        pair: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The device name is not acceptable.
    #[error("device `{device}`: {source}")]
    BadDevice {
        /// The device name.
        device: String,
        /// Why.
        source: sluice_protocol::NameError,
    },
    /// The same token was given to two devices.
    #[error("devices `{first}` and `{second}` have the same token; every device needs its own")]
    Shared {
        /// The device that had the token first.
        first: String,
        /// The device given it again.
        second: String,
    },
    /// The tokens file cannot be read.
    #[error("cannot read tokens file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The operator token is also a device's token: that device could read
    /// the whole fleet, or the operator write as that device.
    #[error(
        "the operator token is device `{device}`'s token; give the operator a token of its own"
    )]
    OperatorIsDevice {
        /// The device.
        device: String,
    },
    /// No device has a token: every device would be refused.
    #[error("no device tokens")]
    Empty,
    /// A line of the tokens file is wrong.
    #[error("tokens file {} line {line}: {source}", path.display())]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        source: Box<TokenError>,
    },
}

/// Bearer tokens and the device each belongs to, and the operator's token
/// (the fleet view, the dashboard, metrics), distinct from every device's.
/// Besides the one operator token, named API tokens ([`Tokens::add_api`])
/// each carry a [`Role`]; the audit trail names the token that made a call.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    by_token: HashMap<String, String>,
    operator: Option<String>,
    api: Vec<ApiToken>,
}

/// What an API token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Role {
    /// Read the fleet, bundles, groups, rollouts and the audit trail.
    Viewer,
    /// Also change them: upload bundles, set groups, run rollouts.
    Operator,
}

impl Role {
    /// Its name, as written in a tokens file and the audit trail.
    pub fn name(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
        }
    }
}

/// Who called the API: the token's name and role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's name (`operator` for the `--operator-token` one).
    pub name: String,
    /// What it may do.
    pub role: Role,
}

#[derive(Debug, Clone)]
struct ApiToken {
    name: String,
    role: Role,
    token: String,
}

impl Tokens {
    /// Add `device`'s token. Refuses a bad device name and a token that
    /// already belongs to another device.
    pub fn insert(&mut self, device: &str, token: &str) -> Result<(), TokenError> {
        sluice_protocol::check_name(device).map_err(|source| TokenError::BadDevice {
            device: device.to_owned(),
            source,
        })?;
        if token.is_empty() {
            return Err(TokenError::Malformed {
                pair: format!("{device}="),
                problem: "the token is empty".into(),
            });
        }
        if self.caller(token).is_some() {
            return Err(TokenError::OperatorIsDevice {
                device: device.to_owned(),
            });
        }
        match self.by_token.get(token) {
            Some(first) if first != device => Err(TokenError::Shared {
                first: first.clone(),
                second: device.to_owned(),
            }),
            _ => {
                self.by_token.insert(token.to_owned(), device.to_owned());
                Ok(())
            }
        }
    }

    /// Parse `DEVICE=TOKEN` (as given to `--token`).
    pub fn parse_pair(pair: &str) -> Result<(String, String), TokenError> {
        let malformed = |problem: &str| TokenError::Malformed {
            pair: pair.split('=').next().unwrap_or_default().to_owned() + "=...",
            problem: problem.into(),
        };
        let (device, token) = pair
            .split_once('=')
            .ok_or_else(|| malformed("expected DEVICE=TOKEN"))?;
        let (device, token) = (device.trim(), token.trim());
        if device.is_empty() || token.is_empty() {
            return Err(malformed("device and token must not be empty"));
        }
        Ok((device.to_owned(), token.to_owned()))
    }

    /// Read a tokens file: one `DEVICE=TOKEN` per line, `#` comments.
    pub fn from_file(path: &Path) -> Result<Tokens, TokenError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut tokens = Tokens::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            Tokens::parse_pair(line)
                .and_then(|(device, token)| tokens.insert(&device, &token))
                .map_err(|e| TokenError::Line {
                    path: path.to_owned(),
                    line: n + 1,
                    source: Box::new(e),
                })?;
        }
        Ok(tokens)
    }

    /// Set the operator's token. Refuses an empty one and one that is a
    /// device's token (device tokens added later are checked too).
    pub fn set_operator(&mut self, token: &str) -> Result<(), TokenError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(TokenError::Malformed {
                pair: "operator token".into(),
                problem: "the token is empty".into(),
            });
        }
        if let Some((_, device)) = self
            .by_token
            .iter()
            .find(|(t, _)| constant_time_eq(t.as_bytes(), token.as_bytes()))
        {
            return Err(TokenError::OperatorIsDevice {
                device: device.clone(),
            });
        }
        if self
            .api
            .iter()
            .any(|t| constant_time_eq(t.token.as_bytes(), token.as_bytes()))
        {
            return Err(TokenError::Malformed {
                pair: "operator token".into(),
                problem: "this token is already an API token's".into(),
            });
        }
        self.operator = Some(token.to_owned());
        Ok(())
    }

    /// Add the API token `name` with `role`. Refuses an empty token, a bad
    /// or repeated name, and a token that is a device's or another API
    /// token's.
    pub fn add_api(&mut self, name: &str, role: Role, token: &str) -> Result<(), TokenError> {
        let token = token.trim();
        let malformed = |problem: &str| TokenError::Malformed {
            pair: format!("{name}:{}=...", role.name()),
            problem: problem.into(),
        };
        sluice_protocol::check_name(name).map_err(|e| malformed(&e.to_string()))?;
        if token.is_empty() {
            return Err(malformed("the token is empty"));
        }
        if name == "operator" || self.api.iter().any(|t| t.name == name) {
            return Err(malformed("this name is already taken"));
        }
        if self.caller(token).is_some() {
            return Err(malformed("this token is already another API token's"));
        }
        if let Some(device) = self.by_token.get(token) {
            return Err(TokenError::OperatorIsDevice {
                device: device.clone(),
            });
        }
        self.api.push(ApiToken {
            name: name.to_owned(),
            role,
            token: token.to_owned(),
        });
        Ok(())
    }

    /// Read an API tokens file: one `NAME:ROLE=TOKEN` per line (`ROLE`
    /// `viewer` or `operator`), `#` comments.
    pub fn add_api_file(&mut self, path: &Path) -> Result<(), TokenError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
            path: path.to_owned(),
            source,
        })?;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let parsed = Tokens::parse_pair(line).and_then(|(who, token)| {
                let bad = |problem: &str| TokenError::Malformed {
                    pair: format!("{who}=..."),
                    problem: problem.into(),
                };
                let (name, role) = who
                    .split_once(':')
                    .ok_or_else(|| bad("expected NAME:ROLE=TOKEN"))?;
                let role = match role.trim() {
                    "viewer" => Role::Viewer,
                    "operator" => Role::Operator,
                    _ => return Err(bad("the role is `viewer` or `operator`")),
                };
                self.add_api(name.trim(), role, &token)
            });
            parsed.map_err(|e| TokenError::Line {
                path: path.to_owned(),
                line: n + 1,
                source: Box::new(e),
            })?;
        }
        Ok(())
    }

    /// Who `token` is, if an API token (or the operator's): compared in
    /// constant time with each.
    pub fn caller(&self, token: &str) -> Option<Caller> {
        if self.is_operator(token) {
            return Some(Caller {
                name: "operator".into(),
                role: Role::Operator,
            });
        }
        self.api
            .iter()
            .find(|t| constant_time_eq(t.token.as_bytes(), token.as_bytes()))
            .map(|t| Caller {
                name: t.name.clone(),
                role: t.role,
            })
    }

    /// Read the operator's token from `path` (its only content, trimmed).
    pub fn set_operator_file(&mut self, path: &Path) -> Result<(), TokenError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
            path: path.to_owned(),
            source,
        })?;
        self.set_operator(&text)
    }

    /// The operator's token, if one is set.
    pub fn operator(&self) -> Option<&str> {
        self.operator.as_deref()
    }

    /// Whether `token` is the operator's (compared in constant time).
    pub fn is_operator(&self, token: &str) -> bool {
        self.operator
            .as_deref()
            .is_some_and(|op| constant_time_eq(op.as_bytes(), token.as_bytes()))
    }

    /// The devices that have a token, by name: the fleet.
    pub fn devices(&self) -> Vec<String> {
        let set: std::collections::BTreeSet<&String> = self.by_token.values().collect();
        set.into_iter().cloned().collect()
    }

    /// Whether `device` has a token (without listing them all).
    pub fn knows(&self, device: &str) -> bool {
        self.by_token.values().any(|d| d == device)
    }

    /// No device has a token.
    pub fn is_empty(&self) -> bool {
        self.by_token.is_empty()
    }

    /// The device whose token is in `authorization` (`Bearer TOKEN`).
    pub fn device_of(&self, authorization: Option<&str>) -> Option<&str> {
        let token = authorization?.strip_prefix("Bearer ")?.trim();
        self.by_token.get(token).map(String::as_str)
    }
}

/// The tokens a running collector answers with, replaced whole when they
/// are reloaded (`sluice-collector` on SIGHUP): a revoked token stops
/// working at once, without a restart; each request sees one table.
#[derive(Debug, Default)]
pub struct TokenTable(RwLock<Arc<Tokens>>);

impl TokenTable {
    /// A table holding `tokens`.
    pub fn new(tokens: Tokens) -> Arc<TokenTable> {
        Arc::new(TokenTable(RwLock::new(Arc::new(tokens))))
    }

    /// The tokens now.
    pub fn current(&self) -> Arc<Tokens> {
        self.0.read().expect("not poisoned").clone()
    }

    /// Answer with `tokens` from now on; refused (nothing changes) when it
    /// has no device token, which would lock every device out.
    pub fn replace(&self, tokens: Tokens) -> Result<(), TokenError> {
        if tokens.is_empty() {
            return Err(TokenError::Empty);
        }
        *self.0.write().expect("not poisoned") = Arc::new(tokens);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_token_for_two_devices_is_refused() {
        let mut tokens = Tokens::default();
        tokens.insert("a", "t").unwrap();
        tokens.insert("a", "t").unwrap();
        assert!(matches!(
            tokens.insert("b", "t"),
            Err(TokenError::Shared { .. })
        ));
        assert_eq!(tokens.device_of(Some("Bearer t")), Some("a"));
    }

    #[test]
    fn the_operator_token_cannot_be_a_device_token() {
        let mut tokens = Tokens::default();
        tokens.insert("a", "ta").unwrap();
        assert!(matches!(
            tokens.set_operator("ta"),
            Err(TokenError::OperatorIsDevice { .. })
        ));
        tokens.set_operator("op").unwrap();
        assert!(matches!(
            tokens.insert("b", "op"),
            Err(TokenError::OperatorIsDevice { .. })
        ));
        assert!(tokens.is_operator("op") && !tokens.is_operator("ta") && !tokens.is_operator("o"));
        assert_eq!(tokens.device_of(Some("Bearer op")), None);
        assert_eq!(tokens.devices(), vec!["a".to_owned()]);
        assert!(tokens.knows("a") && !tokens.knows("op") && !tokens.knows("b"));
    }

    #[test]
    fn api_tokens_have_names_and_roles_and_no_device_shares_one() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("api-tokens");
        std::fs::write(
            &file,
            "# the team\nalice:operator=ta-1\n grafana : viewer = tv-1 \n",
        )
        .unwrap();
        let mut tokens = Tokens::default();
        tokens.insert("d1", "td").unwrap();
        tokens.add_api_file(&file).unwrap();
        assert_eq!(
            tokens.caller("ta-1"),
            Some(Caller {
                name: "alice".into(),
                role: Role::Operator
            })
        );
        assert_eq!(tokens.caller("tv-1").unwrap().role, Role::Viewer);
        assert_eq!(tokens.caller("td"), None);
        assert!(matches!(
            tokens.insert("d2", "tv-1"),
            Err(TokenError::OperatorIsDevice { .. })
        ));
        assert!(tokens.add_api("bob", Role::Viewer, "td").is_err());
        assert!(tokens.add_api("alice", Role::Viewer, "new").is_err());
        assert!(tokens.add_api("carol", Role::Viewer, "ta-1").is_err());
        assert!(tokens.set_operator("tv-1").is_err());
        for bad in ["alice=t", "x:admin=t", "x:viewer="] {
            std::fs::write(&file, bad).unwrap();
            let err = Tokens::default()
                .add_api_file(&file)
                .unwrap_err()
                .to_string();
            assert!(err.contains("line 1"), "{bad}: {err}");
        }
    }

    #[test]
    fn bad_device_names_and_pairs_are_refused() {
        let mut tokens = Tokens::default();
        assert!(matches!(
            tokens.insert("a/b", "t"),
            Err(TokenError::BadDevice { .. })
        ));
        assert!(Tokens::parse_pair("nodelimiter").is_err());
        assert!(Tokens::parse_pair("a=").is_err());
        assert_eq!(
            Tokens::parse_pair(" a = t ").unwrap(),
            ("a".to_owned(), "t".to_owned())
        );
        assert_eq!(tokens.device_of(Some("Basic t")), None);
        assert_eq!(tokens.device_of(None), None);
    }
}
