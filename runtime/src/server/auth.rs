//! Tenants and bearer-token authentication.
//!
//! A device configured with tenants authenticates every Flight call: the `authorization`
//! header must carry `Bearer <token>` whose SHA-256 matches a configured tenant's (tokens are
//! stored only as hashes). A missing or wrong token is `UNAUTHENTICATED`. Each tenant has a
//! namespace of its own: a table `t` of tenant `alice` is stored as `alice/t`, and every name a
//! call carries is scoped to the caller before the storage sees it, so another tenant's table is
//! simply not found (no existence leak). Device-wide actions (`scrub`, `device_info`) need the
//! admin role.
//!
//! A device with no tenants configured runs open: no token is needed, every caller is the one
//! implicit tenant with the admin role, and tables keep their bare names.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tonic::metadata::MetadataMap;

use crate::error::{Error, Result};

/// One tenant as configured (`[[tenants]]` in the device's TOML file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// Tenant name: its namespace, 1-64 characters of `[A-Za-z0-9_-]`.
    pub name: String,
    /// Hex SHA-256 of the tenant's bearer token (`nearstore token` makes both).
    pub token_sha256: String,
    /// Whether the tenant may run device-wide actions.
    #[serde(default)]
    pub admin: bool,
    /// Queries the tenant may run at once (default: the device's `[qos]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queries: Option<usize>,
    /// Queries the tenant may have waiting (default: the device's `[qos]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queued: Option<usize>,
    /// Media bandwidth of the tenant's queries, MB/s (default: the device's `[qos]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_mb_per_s: Option<f64>,
    /// Kernel time budget per query, ms (default: the device's `[qos]`, else the sandbox's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_deadline_ms: Option<u64>,
    /// Budget of any one call into a kernel, ms (default: the device's `[qos]`, else the
    /// sandbox's 1 s): a kernel spinning inside one call is stopped after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_call_ms: Option<u64>,
    /// Kernel memory per query, MiB (default: the device's `[qos]`, else the sandbox's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_memory_mb: Option<usize>,
    /// Kernels the tenant may have registered (default: the device's `[qos]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_kernels: Option<usize>,
}

/// Hex SHA-256 of a token, as stored in the configuration.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The tenant, or `None` on an open device.
    pub tenant: Option<String>,
    /// Admin role.
    pub admin: bool,
}

impl Principal {
    /// The caller of an open device.
    pub fn open() -> Self {
        Principal {
            tenant: None,
            admin: true,
        }
    }

    /// The storage name of the caller's table `name`. A name with a '/' names no table of
    /// the caller's (uploads refuse such names before they get here).
    pub fn scope(&self, name: &str) -> Result<String> {
        if name.contains('/') {
            return Err(Error::UnknownTable(name.to_string()));
        }
        Ok(match &self.tenant {
            Some(t) => format!("{t}/{name}"),
            None => name.to_string(),
        })
    }

    /// `e` with storage names turned back into the caller's names.
    pub fn visible(&self, e: Error) -> Error {
        let name = |n: String| self.unscope(&n).map(str::to_string).unwrap_or(n);
        match e {
            Error::UnknownTable(n) => Error::UnknownTable(name(n)),
            Error::TableExists(n) => Error::TableExists(name(n)),
            Error::UnknownKernel(n) => Error::UnknownKernel(name(n)),
            Error::UnknownColumn {
                table,
                column,
                available,
            } => Error::UnknownColumn {
                table: name(table),
                column,
                available,
            },
            other => other,
        }
    }

    /// The caller's name for a storage name, or `None` if the table is not the caller's.
    pub fn unscope<'a>(&self, stored: &'a str) -> Option<&'a str> {
        match &self.tenant {
            Some(t) => stored
                .strip_prefix(t.as_str())
                .and_then(|r| r.strip_prefix('/')),
            None => (!stored.contains('/')).then_some(stored),
        }
    }
}

struct Tenant {
    name: String,
    hash: [u8; 32],
    admin: bool,
}

/// The device's tenants.
pub struct Auth {
    tenants: Vec<Tenant>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field(
                "tenants",
                &self.tenants.iter().map(|t| &t.name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

fn valid_tenant_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Equality that takes the same time wherever the inputs differ.
fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Auth {
    /// Checks the configured tenants: valid unique names, 64-hex-digit hashes.
    pub fn new(tenants: &[TenantConfig]) -> Result<Self> {
        let mut out: Vec<Tenant> = Vec::new();
        for t in tenants {
            if !valid_tenant_name(&t.name) {
                return Err(Error::Config(format!(
                    "tenant name '{}' must be 1-64 characters of [A-Za-z0-9_-]",
                    t.name
                )));
            }
            if out.iter().any(|o| o.name == t.name) {
                return Err(Error::Config(format!(
                    "tenant '{}' is configured twice",
                    t.name
                )));
            }
            let mut hash = [0u8; 32];
            hex::decode_to_slice(t.token_sha256.trim(), &mut hash).map_err(|_| {
                Error::Config(format!(
                    "tenant '{}': token_sha256 must be 64 hex digits (the SHA-256 of the token; \
                     `nearstore token --tenant {}` makes one)",
                    t.name, t.name
                ))
            })?;
            if out.iter().any(|o| o.hash == hash) {
                return Err(Error::Config(format!(
                    "tenant '{}' has the same token as another tenant",
                    t.name
                )));
            }
            out.push(Tenant {
                name: t.name.clone(),
                hash,
                admin: t.admin,
            });
        }
        Ok(Auth { tenants: out })
    }

    /// Whether the device runs open (no tenants).
    pub fn is_open(&self) -> bool {
        self.tenants.is_empty()
    }

    /// The caller of a request, from its `authorization` header.
    pub fn authenticate(&self, md: &MetadataMap) -> Result<Principal> {
        if self.is_open() {
            return Ok(Principal::open());
        }
        let Some(value) = md.get("authorization") else {
            return Err(Error::Unauthenticated(
                "this device requires a bearer token (authorization: Bearer <token>)".into(),
            ));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .ok_or_else(|| {
                Error::Unauthenticated("the authorization header must be 'Bearer <token>'".into())
            })?;
        let hash: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
        // Compare against every tenant so the time does not depend on which one matched.
        let mut found = None;
        for t in &self.tenants {
            if ct_eq(&t.hash, &hash) {
                found = Some(t);
            }
        }
        match found {
            Some(t) => Ok(Principal {
                tenant: Some(t.name.clone()),
                admin: t.admin,
            }),
            None => Err(Error::Unauthenticated(
                "the bearer token is not valid".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(v: Option<&str>) -> MetadataMap {
        let mut m = MetadataMap::new();
        if let Some(v) = v {
            m.insert("authorization", v.parse().unwrap());
        }
        m
    }

    #[test]
    fn tokens_authenticate_their_tenant_and_nothing_else() {
        let auth = Auth::new(&[
            TenantConfig {
                name: "alice".into(),
                token_sha256: token_hash("a-secret"),
                admin: false,
                max_queries: None,
                max_queued: None,
                media_mb_per_s: None,
                kernel_deadline_ms: None,
                kernel_call_ms: None,
                kernel_memory_mb: None,
                max_kernels: None,
            },
            TenantConfig {
                name: "ops".into(),
                token_sha256: token_hash("o-secret"),
                admin: true,
                max_queries: None,
                max_queued: None,
                media_mb_per_s: None,
                kernel_deadline_ms: None,
                kernel_call_ms: None,
                kernel_memory_mb: None,
                max_kernels: None,
            },
        ])
        .unwrap();
        let p = auth.authenticate(&md(Some("Bearer a-secret"))).unwrap();
        assert_eq!(p.tenant.as_deref(), Some("alice"));
        assert!(!p.admin);
        assert!(
            auth.authenticate(&md(Some("Bearer o-secret")))
                .unwrap()
                .admin
        );
        for bad in [
            None,
            Some("Bearer nope"),
            Some("a-secret"),
            Some("Basic a-secret"),
        ] {
            let e = auth.authenticate(&md(bad)).unwrap_err();
            assert_eq!(
                e.code(),
                nearstore_proto::ErrorCode::Unauthenticated,
                "{bad:?}"
            );
        }
        assert_eq!(p.scope("t").unwrap(), "alice/t");
        assert_eq!(p.unscope("alice/t"), Some("t"));
        assert_eq!(p.unscope("alicex/t"), None);
        assert_eq!(p.unscope("bob/t"), None);
        assert!(p.scope("bob/t").is_err());
        assert_eq!(Principal::open().unscope("alice/t"), None);
        assert_eq!(Principal::open().unscope("t"), Some("t"));
    }

    #[test]
    fn bad_tenant_configuration_is_refused() {
        let t = |name: &str, hash: &str| TenantConfig {
            name: name.into(),
            token_sha256: hash.into(),
            admin: false,
            max_queries: None,
            max_queued: None,
            media_mb_per_s: None,
            kernel_deadline_ms: None,
            kernel_call_ms: None,
            kernel_memory_mb: None,
            max_kernels: None,
        };
        let h = token_hash("x");
        for (cfg, msg) in [
            (vec![t("a/b", &h)], "tenant name"),
            (vec![t("a", "1234")], "64 hex digits"),
            (vec![t("a", &h), t("a", &token_hash("y"))], "twice"),
            (vec![t("a", &h), t("b", &h)], "same token"),
        ] {
            let e = Auth::new(&cfg).unwrap_err().to_string();
            assert!(e.contains(msg), "{e}");
        }
    }
}
