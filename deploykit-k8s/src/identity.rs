//! Who the cluster says the caller is: [`identity`] asks the API server with a
//! `SelfSubjectReview` (`authentication.k8s.io/v1`, GA since Kubernetes 1.28).
//!
//! The answer is the identity the API server authenticated for the client's own credentials —
//! the kubeconfig user's client certificate (its CN), token or OIDC login, or inside a pod its
//! service account (`system:serviceaccount:<namespace>:<name>`) — not a name the caller
//! claims. Under impersonation (`kubectl --as`) it is the impersonated user, whom the API
//! server allowed the real user to impersonate.

use deploykit_core::{Actor, Error, Result};
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use kube::api::{Api, PostParams};

use crate::retry::{api_policy, classify, kube_error, status_code};

/// The prefix of a service account's username.
const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

/// The caller as the API server authenticated it (`status.userInfo` of a
/// `SelfSubjectReview`).
///
/// ```
/// use deploykit_k8s::ClusterIdentity;
/// let robot = ClusterIdentity::new("system:serviceaccount:ci:deployer", None, vec![]);
/// assert_eq!(robot.service_account(), Some(("ci", "deployer")));
/// assert!(ClusterIdentity::new("alice@example.com", None, vec![]).service_account().is_none());
/// assert!(ClusterIdentity::new("system:anonymous", None, vec![]).is_anonymous());
/// // The actor of journals, audit records and access checks:
/// assert_eq!(robot.actor()?.to_string(), "system:serviceaccount:ci:deployer");
/// assert!(ClusterIdentity::new("system:anonymous", None, vec![]).actor().is_err());
/// # Ok::<(), deploykit_core::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClusterIdentity {
    /// The user name: a kubeconfig user's certificate CN or OIDC claim, or
    /// `system:serviceaccount:<namespace>:<name>`.
    pub username: String,
    /// A unique id of the user across time, when the authenticator gives one (service accounts
    /// do: their object's uid).
    pub uid: Option<String>,
    /// The groups the user is in (`system:authenticated`, `system:serviceaccounts:<ns>`, the
    /// certificate's O, OIDC groups…).
    pub groups: Vec<String>,
}

impl ClusterIdentity {
    /// An identity with these fields (for tests and callers that build one).
    pub fn new(username: impl Into<String>, uid: Option<String>, groups: Vec<String>) -> Self {
        ClusterIdentity {
            username: username.into(),
            uid,
            groups,
        }
    }

    /// The namespace and name of the service account, if the caller is one.
    pub fn service_account(&self) -> Option<(&str, &str)> {
        let rest = self.username.strip_prefix(SERVICE_ACCOUNT_PREFIX)?;
        let (namespace, name) = rest.split_once(':')?;
        (!namespace.is_empty() && !name.is_empty() && !name.contains(':'))
            .then_some((namespace, name))
    }

    /// Whether the API server let the caller in without credentials (`system:anonymous`):
    /// not an identity to act as.
    pub fn is_anonymous(&self) -> bool {
        self.username == "system:anonymous"
    }

    /// This identity as the [`Actor`] of deployments, audit records and
    /// [`AccessPolicy`](deploykit_core::access::AccessPolicy) checks (the user name); an
    /// anonymous caller is refused, naming why.
    pub fn actor(&self) -> Result<Actor> {
        if self.is_anonymous() {
            return Err(Error::invalid(
                "identity",
                "the cluster let the client in without credentials (system:anonymous): \
                 not an identity to act as; give the kubeconfig a user or run as a service \
                 account",
            ));
        }
        Ok(Actor::new(&self.username))
    }
}

/// Asks the API server who `client`'s credentials authenticate as: a `SelfSubjectReview`
/// (POST `/apis/authentication.k8s.io/v1/selfsubjectreviews`, allowed to every user by the
/// `system:basic-user` role), answered with `status.userInfo`. 429 and 5xx answers are
/// retried (5 attempts).
///
/// Fails with [`Error::Backend`] when the cluster does not serve the API (404: Kubernetes
/// before 1.28, or a server that disabled it), saying so; when the answer has no user name;
/// or on any other refusal, with the API server's message. [`Error::Persistent`] when the
/// retries are used up.
///
/// ```no_run
/// # async fn f() -> deploykit_core::Result<()> {
/// let client = kube::Client::try_default()
///     .await
///     .map_err(|e| deploykit_core::Error::backend("connect to the cluster", e.to_string()))?;
/// let me = deploykit_k8s::identity(&client).await?;
/// println!("acting as {} (groups {:?})", me.username, me.groups);
/// # Ok(()) }
/// ```
pub async fn identity(client: &kube::Client) -> Result<ClusterIdentity> {
    const OPERATION: &str = "ask the cluster who the caller is (SelfSubjectReview)";
    let api: Api<SelfSubjectReview> = Api::all(client.clone());
    let review = SelfSubjectReview::default();
    let params = PostParams::default();
    let answer = api_policy()
        .run(OPERATION, classify, || api.create(&params, &review))
        .await;
    let answer = match answer {
        Ok(answer) => answer,
        Err(e) if status_code(e.error()) == Some(404) => {
            return Err(Error::backend(
                OPERATION,
                "the cluster does not serve authentication.k8s.io/v1 SelfSubjectReview \
                 (404): it needs Kubernetes 1.28 or later, where the API server tells a \
                 client who it is authenticated as",
            ));
        }
        Err(e) => return Err(kube_error(OPERATION, e)),
    };
    let user = answer.status.and_then(|s| s.user_info).unwrap_or_default();
    let username = user.username.filter(|u| !u.is_empty()).ok_or_else(|| {
        Error::backend(
            OPERATION,
            "the answer names no user (status.userInfo.username is empty)",
        )
    })?;
    Ok(ClusterIdentity {
        username,
        uid: user.uid.filter(|u| !u.is_empty()),
        groups: user.groups.unwrap_or_default(),
    })
}
