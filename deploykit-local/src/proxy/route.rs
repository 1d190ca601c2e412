//! The routing table as the request path uses it: the run-time state of instances, revisions
//! and routes attached ([`policy`](super::policy)), and the weighted, header and sticky-cookie
//! choice of a group and an instance, and the mirror choice.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use deploykit_core::{CircuitBreaker, Protocol, Retries};
use http::header::{COOKIE, HeaderMap, HeaderName};
use tokio::time::Instant;

use super::policy::{RateLimiter, Registries, RetryBudget, UpstreamState};
use super::{Group, Route, RoutingTable, Upstream};

/// An immutable routing table plus what routing needs at run time.
pub(super) struct Snapshot {
    pub(super) table: Arc<RoutingTable>,
    hosts: HashMap<String, CompiledRoute>,
    default: Option<CompiledRoute>,
    /// The state of every upstream in the table.
    counters: HashMap<String, Arc<UpstreamState>>,
}

/// The host key of the default route's budgets and limiter.
const DEFAULT_HOST: &str = "";

impl Snapshot {
    /// Compiles `table`, taking (or creating) the state of its upstreams, revisions and routes
    /// from `registries`, and forgetting there what the table no longer uses.
    pub(super) fn new(table: Arc<RoutingTable>, registries: &mut Registries) -> Self {
        let mut counters = HashMap::new();
        let mut budgets = Vec::new();
        let mut compile = |host: &str, route: &Route| {
            CompiledRoute::new(host, route, registries, &mut counters, &mut budgets)
        };
        let hosts: HashMap<String, CompiledRoute> = table
            .hosts
            .iter()
            .map(|(host, route)| {
                let host = host.to_ascii_lowercase();
                let compiled = compile(&host, route);
                (host, compiled)
            })
            .collect();
        // The default route is often one of the hosts' routes (the local environment's only
        // service): then it shares that host's limiter and budgets, so that a request sent
        // with another Host header does not get a bucket of its own.
        let default_key = table
            .hosts
            .iter()
            .find(|(_, route)| Some(*route) == table.default.as_ref())
            .map_or(DEFAULT_HOST.to_owned(), |(host, _)| {
                host.to_ascii_lowercase()
            });
        let default = table.default.as_ref().map(|r| compile(&default_key, r));
        let ids: Vec<&str> = counters.keys().map(String::as_str).collect();
        let mut limited: Vec<&str> = hosts.keys().map(String::as_str).collect();
        limited.push(DEFAULT_HOST);
        registries.retain(&ids, &budgets, &limited);
        Snapshot {
            table,
            hosts,
            default,
            counters,
        }
    }

    /// The route serving `host` (lowercase, without port).
    pub(super) fn route(&self, host: &str) -> Option<&CompiledRoute> {
        self.hosts.get(host).or(self.default.as_ref())
    }

    /// Ids of all upstreams in the table.
    pub(super) fn upstream_ids(&self) -> impl Iterator<Item = &str> {
        self.counters.keys().map(String::as_str)
    }

    /// Whether `id` is in this table with exactly this state (a state forgotten and re-created
    /// in between does not count).
    pub(super) fn holds(&self, id: &str, counter: &Arc<UpstreamState>) -> bool {
        self.counters
            .get(id)
            .is_some_and(|c| Arc::ptr_eq(c, counter))
    }
}

pub(super) struct CompiledRoute {
    groups: Vec<CompiledGroup>,
    /// The route's rate limiter, if it has a limit.
    pub(super) limiter: Option<Arc<RateLimiter>>,
    header: Option<(HeaderName, String, usize)>,
    /// Requests routed by weight so far; drives the deterministic spread.
    next: AtomicU64,
    /// Index of the mirror group and the share copied to it, in percent.
    mirror: Option<(usize, u32)>,
    /// Requests eligible for a mirror copy so far; drives the spread of the copies.
    mirror_next: AtomicU64,
}

struct CompiledGroup {
    name: Arc<str>,
    weight: u32,
    upstreams: Vec<(Upstream, Arc<UpstreamState>)>,
    /// Round-robin start among equally loaded upstreams.
    rr: AtomicUsize,
    policy: Arc<GroupPolicy>,
}

/// A revision's traffic policy as requests apply it.
pub(super) struct GroupPolicy {
    /// What its instances speak.
    pub(super) protocol: Protocol,
    /// Time to the response headers, retries included.
    pub(super) timeout: Option<Duration>,
    /// Its retries and their budget.
    pub(super) retries: Option<(Retries, Arc<RetryBudget>)>,
    /// Its breaker.
    pub(super) breaker: Option<CircuitBreaker>,
    /// The state of its instances, for the cap on requests in flight.
    members: Vec<Arc<UpstreamState>>,
}

impl GroupPolicy {
    /// Whether the revision already serves as many requests as its breaker allows (this one
    /// counted).
    pub(super) fn overloaded(&self) -> Option<u32> {
        let max = self.breaker.as_ref()?.max_requests?;
        let load: usize = self
            .members
            .iter()
            .map(|m| m.in_flight.load(Ordering::SeqCst))
            .sum();
        (load > max as usize).then_some(max)
    }
}

/// The outcome of routing one request.
pub(super) struct Pick {
    pub(super) group: Arc<str>,
    pub(super) upstream: Upstream,
    pub(super) counter: Arc<UpstreamState>,
    /// Chosen by weight (rather than by header, cookie or retry preference).
    pub(super) by_weight: bool,
    /// The policy of the chosen revision.
    pub(super) policy: Arc<GroupPolicy>,
}

/// What to avoid and prefer when picking again after a failed connection attempt.
pub(super) struct Retry<'a> {
    pub(super) group: &'a str,
    pub(super) exclude: &'a str,
}

impl CompiledRoute {
    fn new(
        host: &str,
        route: &Route,
        registries: &mut Registries,
        counters: &mut HashMap<String, Arc<UpstreamState>>,
        budgets: &mut Vec<(String, String)>,
    ) -> Self {
        let groups: Vec<CompiledGroup> = route
            .groups
            .iter()
            .map(|g| CompiledGroup::new(host, g, registries, counters, budgets))
            .collect();
        let limiter = route
            .rate_limit
            .as_ref()
            .map(|limit| registries.limiter(host, limit));
        let header = route.header.as_ref().and_then(|h| {
            let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
            let index = groups.iter().position(|g| *g.name == *h.group)?;
            Some((name, h.value.clone(), index))
        });
        let mirror = route.mirror.as_ref().and_then(|m| {
            let index = groups.iter().position(|g| *g.name == *m.group)?;
            Some((index, m.percent))
        });
        CompiledRoute {
            groups,
            limiter,
            header,
            next: AtomicU64::new(0),
            mirror,
            mirror_next: AtomicU64::new(0),
        }
    }

    /// Whether a request served by group `primary` gets a mirror copy: the mirror group's name
    /// if so. Only requests that could be copied (a mirror with a share above 0, served by
    /// another group) advance the spread, so of every 100 of them exactly `percent` are copied.
    pub(super) fn mirror_due(&self, primary: &str) -> Option<Arc<str>> {
        let (index, percent) = self.mirror?;
        let group = &self.groups[index];
        if percent == 0 || *group.name == *primary {
            return None;
        }
        let n = self.mirror_next.fetch_add(1, Ordering::Relaxed);
        // The same coprime stride as the weighted spread.
        ((n % 100) * 37 % 100 < u64::from(percent)).then(|| group.name.clone())
    }

    /// An instance of group `name` (the least loaded, other than `exclude`).
    pub(super) fn pick_in(&self, name: &str, exclude: Option<&str>) -> Option<Pick> {
        let index = self.groups.iter().position(|g| *g.name == *name)?;
        self.pick_at(index, exclude, false)
    }

    fn pick_at(&self, index: usize, exclude: Option<&str>, by_weight: bool) -> Option<Pick> {
        let group = &self.groups[index];
        group.pick(exclude).map(|(upstream, counter)| Pick {
            group: group.name.clone(),
            upstream: upstream.clone(),
            counter: counter.clone(),
            by_weight,
            policy: group.policy.clone(),
        })
    }

    /// Picks a group and an instance for a request with `headers`: header route, then sticky
    /// cookie, then weights. With `retry`, the failed instance is excluded and its group is
    /// tried first.
    pub(super) fn pick(
        &self,
        headers: &HeaderMap,
        sticky_cookie: Option<&str>,
        retry: Option<&Retry<'_>>,
    ) -> Option<Pick> {
        let exclude = retry.map(|r| r.exclude);
        let chosen = |index: usize, by_weight: bool| self.pick_at(index, exclude, by_weight);
        if let Some(retry) = retry
            && let Some(index) = self.groups.iter().position(|g| *g.name == *retry.group)
            && let Some(pick) = chosen(index, false)
        {
            return Some(pick);
        }
        if let Some((name, value, index)) = &self.header
            && headers
                .get_all(name)
                .iter()
                .any(|v| v.as_bytes() == value.as_bytes())
            && let Some(pick) = chosen(*index, false)
        {
            return Some(pick);
        }
        if let Some(cookie) = sticky_cookie
            && let Some(wanted) = cookie_value(headers, cookie)
            && let Some(index) = self
                .groups
                .iter()
                .position(|g| g.weight > 0 && *g.name == *wanted)
            && let Some(pick) = chosen(index, false)
        {
            return Some(pick);
        }
        chosen(self.weighted(exclude)?, true)
    }

    /// The group whose cumulative weight range contains the next point of the spread, over the
    /// groups with a weight and an instance.
    fn weighted(&self, exclude: Option<&str>) -> Option<usize> {
        let eligible = |g: &CompiledGroup| g.weight > 0 && g.has_upstream(exclude);
        let total: u64 = self
            .groups
            .iter()
            .filter(|g| eligible(g))
            .map(|g| u64::from(g.weight))
            .sum();
        if total == 0 {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        // 37 is coprime with 100: every 100 consecutive requests visit each point of 0..100
        // once, in an order that interleaves the groups.
        let k = (n % 100) * 37 % 100 * total / 100;
        let mut cumulative = 0;
        for (index, group) in self.groups.iter().enumerate() {
            if !eligible(group) {
                continue;
            }
            cumulative += u64::from(group.weight);
            if k < cumulative {
                return Some(index);
            }
        }
        None
    }
}

impl CompiledGroup {
    fn new(
        host: &str,
        group: &Group,
        registries: &mut Registries,
        counters: &mut HashMap<String, Arc<UpstreamState>>,
        budgets: &mut Vec<(String, String)>,
    ) -> Self {
        let upstreams: Vec<(Upstream, Arc<UpstreamState>)> = group
            .upstreams
            .iter()
            .map(|u| {
                let state = registries.upstream(&u.id);
                counters.insert(u.id.clone(), state.clone());
                (u.clone(), state)
            })
            .collect();
        let traffic = &group.policy;
        let retries = traffic.retries.as_ref().map(|retries| {
            budgets.push((host.to_owned(), group.name.clone()));
            let budget = registries.budget(host, &group.name, retries);
            (retries.clone(), budget)
        });
        let policy = GroupPolicy {
            protocol: traffic.protocol,
            timeout: traffic.timeout,
            retries,
            breaker: traffic.circuit_breaker.clone(),
            members: upstreams.iter().map(|(_, s)| s.clone()).collect(),
        };
        CompiledGroup {
            name: group.name.as_str().into(),
            weight: group.weight,
            upstreams,
            rr: AtomicUsize::new(0),
            policy: Arc::new(policy),
        }
    }

    fn has_upstream(&self, exclude: Option<&str>) -> bool {
        self.upstreams
            .iter()
            .any(|(u, _)| Some(u.id.as_str()) != exclude)
    }

    /// The least loaded instance in rotation; ties go round-robin. Instances its breaker took
    /// out are left out, unless all of them are out (then all serve: a revision is never
    /// black-holed by its breaker).
    fn pick(&self, exclude: Option<&str>) -> Option<&(Upstream, Arc<UpstreamState>)> {
        let len = self.upstreams.len();
        if len == 0 {
            return None;
        }
        let start = self.rr.fetch_add(1, Ordering::Relaxed) % len;
        let now = Instant::now();
        let mut best = None;
        let mut best_rank = (true, usize::MAX);
        for i in 0..len {
            let entry = &self.upstreams[(start + i) % len];
            if Some(entry.0.id.as_str()) == exclude {
                continue;
            }
            let rank = (
                entry.1.ejected(now),
                entry.1.in_flight.load(Ordering::Relaxed),
            );
            if best.is_none() || rank < best_rank {
                best = Some(entry);
                best_rank = rank;
            }
        }
        best
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.trim_matches('"'))
}
