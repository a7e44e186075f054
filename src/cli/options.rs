//! The delivery options' flags of `webhooks create` and `webhooks update` (issue 16), turned
//! into the API's own [`OptionsIn`]. Credentials are read from files (or `-` for stdin), never
//! from the command line, where `ps` and shell history would show them.

use std::path::PathBuf;

use crate::api::options::{AuthIn, ClientCertificateIn, HeaderIn, OptionsIn};
use anyhow::{bail, Context, Result};
use clap::Args;

/// Delivery options; on `update`, only the flags given change anything.
#[derive(Debug, Args, Default)]
pub struct DeliveryOptionArgs {
    /// Ordering of deliveries: `key` (one at a time per ordering key, in ingest order) or
    /// `none`.
    #[arg(long, value_name = "none|key")]
    pub ordering: Option<String>,
    /// With `--ordering key`: how long one delivery may hold its key, e.g. 30m; `none`
    /// holds until it ends.
    #[arg(long, value_name = "DURATION|none")]
    pub ordering_hold_max: Option<String>,
    /// Requests open at once to this webhook (1-64); `default` for the daemon's value.
    #[arg(long, value_name = "N|default")]
    pub max_in_flight: Option<String>,
    /// Requests per second at most (bursts up to as many); `none` for no limit.
    #[arg(long, value_name = "N|none")]
    pub rate_limit: Option<String>,
    /// Only events whose envelope matches this filter, JSON like
    /// '{"data.priority":{"$in":["p1","p2"]}}'; `none` to remove it.
    #[arg(long, value_name = "JSON|none")]
    pub filter: Option<String>,
    /// A custom header `Name: value` (repeat for several; replaces the list).
    #[arg(long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// A write-only custom header whose value is read from FILE (`Name=FILE`, `-` for
    /// stdin); on update, `Name` alone keeps the stored value.
    #[arg(long = "secret-header", value_name = "NAME=FILE")]
    pub secret_headers: Vec<String>,
    /// Remove every custom header.
    #[arg(long, conflicts_with_all = ["headers", "secret_headers"])]
    pub clear_headers: bool,
    /// Receiver authentication: `basic`, `bearer`, `oauth2` (client credentials) or `none`.
    #[arg(long, value_name = "basic|bearer|oauth2|none")]
    pub auth: Option<String>,
    /// `--auth basic`: the username.
    #[arg(long)]
    pub auth_username: Option<String>,
    /// The password (basic), token (bearer) or client secret (oauth2), read from this file
    /// (`-` for stdin).
    #[arg(long, value_name = "FILE")]
    pub auth_secret_file: Option<PathBuf>,
    /// `--auth oauth2`: the token endpoint.
    #[arg(long, value_name = "URL")]
    pub oauth_token_url: Option<String>,
    /// `--auth oauth2`: the client id.
    #[arg(long)]
    pub oauth_client_id: Option<String>,
    /// `--auth oauth2`: the scope asked for.
    #[arg(long)]
    pub oauth_scope: Option<String>,
    /// `--auth oauth2`: the audience asked for.
    #[arg(long)]
    pub oauth_audience: Option<String>,
    /// A PEM certificate chain to present for mutual TLS (with `--client-key`).
    #[arg(long, value_name = "FILE", requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// The PEM private key of `--client-cert`.
    #[arg(long, value_name = "FILE", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// Remove the client certificate.
    #[arg(long, conflicts_with = "client_cert")]
    pub no_client_cert: bool,
    /// Outbound proxy: `none` (direct), `default` (the daemon's) or an http:// URL.
    #[arg(long, value_name = "none|default|URL")]
    pub proxy: Option<String>,
    /// Signature schemes: `hmac` or `hmac,ed25519` (a `v1a` Standard Webhooks signature).
    #[arg(long, value_delimiter = ',', value_name = "hmac[,ed25519]")]
    pub signature_scheme: Option<Vec<String>>,
}

fn read_secret(path: &std::path::Path) -> Result<String> {
    let text = String::from_utf8(super::read_input(path)?)
        .with_context(|| format!("{} is not UTF-8 text", path.display()))?;
    Ok(text.trim_end_matches(['\n', '\r']).to_owned())
}

/// `null` (the word `null` stands for) → `None`, else the parsed value.
fn nullable<T: std::str::FromStr>(text: &str, null: &str, flag: &str) -> Result<Option<T>> {
    if text == null {
        return Ok(None);
    }
    match text.parse::<T>() {
        Ok(v) => Ok(Some(v)),
        Err(_) => bail!("{flag}: expected a number or {null:?}, got {text:?}"),
    }
}

/// The API's delivery options of these flags (absent flags give absent fields).
///
/// # Errors
/// A flag that does not parse, a file that cannot be read, or an `--auth` without what it
/// needs.
pub fn options_body(args: DeliveryOptionArgs) -> Result<OptionsIn> {
    let mut body = OptionsIn {
        ordering: args.ordering.map(Some),
        ordering_hold_max: args.ordering_hold_max.map(|h| (h != "none").then_some(h)),
        ..OptionsIn::default()
    };
    if let Some(m) = args.max_in_flight {
        body.max_in_flight = Some(nullable(&m, "default", "--max-in-flight")?);
    }
    if let Some(r) = args.rate_limit {
        body.rate_limit = Some(nullable(&r, "none", "--rate-limit")?);
    }
    if let Some(f) = args.filter {
        body.filter = Some(if f == "none" {
            None
        } else {
            Some(serde_json::from_str(&f).context("--filter is not JSON")?)
        });
    }
    if args.clear_headers {
        body.headers = Some(Some(Vec::new()));
    } else if !args.headers.is_empty() || !args.secret_headers.is_empty() {
        let mut list = Vec::new();
        for header in &args.headers {
            let Some((name, value)) = header.split_once(':') else {
                bail!("--header {header:?}: expected \"Name: value\"");
            };
            list.push(HeaderIn {
                name: name.trim().to_owned(),
                value: Some(value.trim().to_owned()),
                secret: false,
            });
        }
        for header in &args.secret_headers {
            list.push(match header.split_once('=') {
                Some((name, file)) => HeaderIn {
                    name: name.trim().to_owned(),
                    value: Some(read_secret(std::path::Path::new(file))?),
                    secret: true,
                },
                None => HeaderIn {
                    name: header.trim().to_owned(),
                    value: None,
                    secret: true,
                },
            });
        }
        body.headers = Some(Some(list));
    }
    if let Some(kind) = args.auth {
        let secret = || -> Result<String> {
            match &args.auth_secret_file {
                Some(path) => read_secret(path),
                None => bail!("--auth {kind} needs --auth-secret-file (the credential, never on the command line)"),
            }
        };
        let auth = match kind.as_str() {
            "none" => None,
            "basic" => Some(AuthIn::Basic {
                username: args
                    .auth_username
                    .clone()
                    .context("--auth basic needs --auth-username")?,
                password: secret()?,
            }),
            "bearer" => Some(AuthIn::Bearer { token: secret()? }),
            "oauth2" => Some(AuthIn::Oauth2ClientCredentials {
                token_url: args
                    .oauth_token_url
                    .clone()
                    .context("--auth oauth2 needs --oauth-token-url")?,
                client_id: args
                    .oauth_client_id
                    .clone()
                    .context("--auth oauth2 needs --oauth-client-id")?,
                client_secret: secret()?,
                scope: args.oauth_scope.clone(),
                audience: args.oauth_audience.clone(),
            }),
            other => bail!("--auth {other:?}: expected basic, bearer, oauth2 or none"),
        };
        body.auth = Some(auth);
    }
    if args.no_client_cert {
        body.client_certificate = Some(None);
    } else if let (Some(cert), Some(key)) = (&args.client_cert, &args.client_key) {
        body.client_certificate = Some(Some(ClientCertificateIn {
            certificate: read_secret(cert)?,
            private_key: read_secret(key)?,
        }));
    }
    if let Some(proxy) = args.proxy {
        body.proxy = Some((proxy != "default").then_some(proxy));
    }
    if let Some(schemes) = args.signature_scheme {
        body.signature_scheme = Some(Some(schemes));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn flags_become_the_api_fields_and_credentials_come_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("token");
        std::fs::write(&secret, "s3cret\n").unwrap();
        let body = options_body(DeliveryOptionArgs {
            ordering: Some("key".into()),
            max_in_flight: Some("default".into()),
            rate_limit: Some("20".into()),
            filter: Some(r#"{"data.priority":"p1"}"#.into()),
            headers: vec!["X-Tenant: acme".into()],
            auth: Some("bearer".into()),
            auth_secret_file: Some(secret),
            proxy: Some("none".into()),
            signature_scheme: Some(vec!["hmac".into(), "ed25519".into()]),
            ..DeliveryOptionArgs::default()
        })
        .unwrap();
        assert_eq!(
            serde_json::to_value(body).unwrap(),
            json!({"ordering": "key", "max_in_flight": null, "rate_limit": 20,
                   "filter": {"data.priority": "p1"},
                   "headers": [{"name": "X-Tenant", "value": "acme", "secret": false}],
                   "auth": {"type": "bearer", "token": "s3cret"}, "proxy": "none",
                   "signature_scheme": ["hmac", "ed25519"]})
        );
        assert!(options_body(DeliveryOptionArgs {
            auth: Some("basic".into()),
            ..DeliveryOptionArgs::default()
        })
        .is_err());
        assert!(options_body(DeliveryOptionArgs {
            rate_limit: Some("fast".into()),
            ..DeliveryOptionArgs::default()
        })
        .is_err());
    }
}
