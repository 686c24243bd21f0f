//! The connection to the cluster: a TLS channel to the first master of the context that
//! answers. Masters forward writes to the leader themselves, so any master will do.

use std::time::Duration;

use skiff_proto::v1::cluster_api_client::ClusterApiClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::context::Context;

/// The TLS name every master certificate carries (see docs/pki.md).
pub const MASTER_TLS_NAME: &str = "skiff-master";

/// Why no master could be reached.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot read {what} {path}: {err}")]
    ReadPem {
        what: &'static str,
        path: std::path::PathBuf,
        err: std::io::Error,
    },
    #[error("the context names a certificate but no key (or a key but no certificate)")]
    HalfIdentity,
    #[error("the context names no master address")]
    NoMasters,
    #[error("invalid master address {addr:?}: {err}")]
    Address {
        addr: String,
        err: tonic::transport::Error,
    },
    #[error("no master answered: {0}")]
    Unreachable(String),
}

/// Connects to the first master of `ctx` that answers within a few seconds.
pub async fn connect(ctx: &Context) -> Result<ClusterApiClient<Channel>, ClientError> {
    Ok(ClusterApiClient::new(channel(ctx).await?).max_decoding_message_size(64 << 20))
}

/// A channel to the first master of `ctx` that answers.
pub async fn channel(ctx: &Context) -> Result<Channel, ClientError> {
    if ctx.masters.is_empty() {
        return Err(ClientError::NoMasters);
    }
    let tls = tls_config(ctx)?;
    let mut failures = Vec::new();
    for addr in &ctx.masters {
        let ep = endpoint(addr, tls.clone())?;
        match ep.connect().await {
            Ok(ch) => return Ok(ch),
            Err(err) => failures.push(format!("{addr}: {}", error_chain(&err))),
        }
    }
    Err(ClientError::Unreachable(failures.join("; ")))
}

fn endpoint(addr: &str, tls: Option<ClientTlsConfig>) -> Result<Endpoint, ClientError> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut ep = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(|err| ClientError::Address {
            addr: addr.to_owned(),
            err,
        })?
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true);
    if let Some(tls) = tls {
        ep = ep.tls_config(tls).map_err(|err| ClientError::Address {
            addr: addr.to_owned(),
            err,
        })?;
    }
    Ok(ep)
}

fn tls_config(ctx: &Context) -> Result<Option<ClientTlsConfig>, ClientError> {
    let Some(ca) = &ctx.ca else {
        return Ok(None);
    };
    let read = |what, path: &std::path::PathBuf| {
        std::fs::read(path).map_err(|err| ClientError::ReadPem {
            what,
            path: path.clone(),
            err,
        })
    };
    let mut tls = ClientTlsConfig::new()
        .domain_name(MASTER_TLS_NAME)
        .ca_certificate(Certificate::from_pem(read("CA certificate", ca)?));
    match (&ctx.cert, &ctx.key) {
        (Some(cert), Some(key)) => {
            tls = tls.identity(Identity::from_pem(
                read("client certificate", cert)?,
                read("client key", key)?,
            ));
        }
        (None, None) => {}
        _ => return Err(ClientError::HalfIdentity),
    }
    Ok(Some(tls))
}

/// An error and its causes on one line: tonic's transport errors hide the useful part
/// ("connection refused") in their source.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let text = e.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unreachable_cluster_names_every_address_tried() {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = probe.local_addr().expect("addr").to_string();
        drop(probe);
        let ctx = Context {
            masters: vec![addr.clone()],
            ..Default::default()
        };
        let err = connect(&ctx).await.expect_err("nothing listens");
        let text = err.to_string();
        assert!(text.contains(&addr), "{text}");
        assert!(text.to_lowercase().contains("refused"), "{text}");
    }

    #[tokio::test]
    async fn a_missing_ca_file_is_named() {
        let ctx = Context {
            masters: vec!["127.0.0.1:1".into()],
            ca: Some("/nonexistent/ca.pem".into()),
            ..Default::default()
        };
        let err = connect(&ctx).await.expect_err("no ca");
        assert!(err.to_string().contains("/nonexistent/ca.pem"));
    }
}
