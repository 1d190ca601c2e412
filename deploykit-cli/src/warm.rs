//! A warm standby on local daemons (`[environments.<env>.standby] warm = N`): the core's
//! [`WarmStandby`] over the two environments' daemons, and their [`Handover`]: the primary's
//! proxy forwards every request to the standby's, and requests through both must reach a
//! ready instance.

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use deploykit_core::failover::{Handover, WarmStandby};
use deploykit_core::{EnvironmentName, Error, Result, ServiceId};
use deploykit_local::LocalClient;

use crate::context::Context;

/// The warm standby of `from` on `to`, when its standby settings have `warm`.
pub(crate) fn configured(
    ctx: &Context,
    from: &EnvironmentName,
    to: &EnvironmentName,
    warm: Option<u32>,
) -> Result<Option<WarmStandby>> {
    let Some(warm) = warm else {
        return Ok(None);
    };
    let config = ctx.config()?;
    let handover = ProxyHandover {
        from_env: from.clone(),
        to_env: to.clone(),
        from: ctx.client_for(from)?,
        to: ctx.client_for(to)?,
    };
    Ok(Some(
        WarmStandby::builder()
            .from_env(from.clone())
            .to_env(to.clone())
            .from(Arc::new(handover.from.clone()))
            .to(Arc::new(handover.to.clone()))
            .to_spec(config.environment(to.as_str())?.clone())
            .warm(warm)
            .services(config.services().map(|s| s.name.clone()).collect())
            .handover(Arc::new(handover))
            .build(),
    ))
}

/// The local daemons' handover: the primary's proxy forwards to the standby's.
#[derive(Debug)]
struct ProxyHandover {
    from_env: EnvironmentName,
    to_env: EnvironmentName,
    from: LocalClient,
    to: LocalClient,
}

impl ProxyHandover {
    /// The standby's proxy, and what to trust for it when it serves TLS.
    async fn standby_proxy(&self) -> Result<(SocketAddr, Option<String>)> {
        let info = self.to.info().await?;
        Ok((info.proxy, info.proxy_trust))
    }
}

#[async_trait]
impl Handover for ProxyHandover {
    /// The primary's proxy forwards every request somewhere else (whatever the service).
    async fn redirected(&self, _service: &ServiceId) -> Result<Option<String>> {
        Ok(self.from.info().await?.forward.map(|to| to.to_string()))
    }

    async fn standby_reachable(&self) -> std::result::Result<String, String> {
        self.standby_proxy()
            .await
            .map(|(proxy, _)| format!("{} proxy on {proxy}", self.to_env))
            .map_err(|e| {
                format!(
                    "the daemon of {} does not answer: {}",
                    self.to_env,
                    e.chain()
                )
            })
    }

    /// The standby's proxy serves its own instances; the primary's forwards every request to
    /// it, over TLS when the standby's proxy serves TLS (said plainly when the primary's
    /// daemon is gone: then only a hook can move clients).
    async fn hand_over(&self, _services: &[ServiceId]) -> Result<String> {
        self.to.forward(None, None).await?;
        let (to, trust) = self.standby_proxy().await?;
        let over = if trust.is_some() { " over TLS" } else { "" };
        match self.from.forward(Some(to), trust.as_deref()).await {
            Ok(()) => Ok(format!(
                "{}'s proxy forwards every request to {to}{over}",
                self.from_env
            )),
            Err(e) if e.is_retryable() => Ok(format!(
                "{}'s daemon is gone ({}); clients must reach {} at {to}",
                self.from_env,
                e.chain(),
                self.to_env
            )),
            Err(e) => Err(e),
        }
    }

    /// A GET of `path` through the standby's proxy, and through the primary's when its daemon
    /// answers, answers 2xx.
    async fn check(&self, service: &ServiceId, path: &str) -> Result<String> {
        let to = self.standby_proxy().await?;
        let from = self
            .from
            .info()
            .await
            .ok()
            .map(|i| (i.proxy, i.proxy_trust));
        let host = format!("{service}.localhost");
        let mut checked = Vec::new();
        for (proxy, trust) in std::iter::once(to).chain(from) {
            crate::http_get::get_at(proxy, &host, path, trust.as_deref())
                .await
                .map_err(|why| Error::transient(format!("verify {service}"), why))?;
            let scheme = if trust.is_some() { "https" } else { "http" };
            checked.push(format!("{scheme}://{proxy}{path} ({host})"));
        }
        Ok(format!("answered 2xx: {}", checked.join(", ")))
    }
}
