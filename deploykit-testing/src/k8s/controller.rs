//! The simulated Deployment controller: the Pods a Deployment's ReplicaSet would keep, and the
//! Deployment's status from them. It is built on the store: the layer above runs it after each
//! write the controller should react to, see [`Controller::react`].

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::patch::{meta_str, now_rfc3339};
use super::request::Key;
use super::store::{Store, Stored};

/// The simulated Deployment controller and what it remembers between runs.
#[derive(Default)]
pub(super) struct Controller {
    /// The pod template each Deployment's pods were made from (a changed template replaces
    /// them). An entry is dropped when its Deployment is reconciled after being removed; one
    /// left by a Deployment the garbage collector removed is harmless, since pods are matched
    /// to their Deployment by uid and a re-created Deployment has a new one.
    templates: BTreeMap<Key, Value>,
}

impl Controller {
    /// Reacts to a write (or a removal) of `object` at `key` that the controller did not make
    /// itself: a Deployment is reconciled, and so is the Deployment that owns a pod.
    pub(super) fn react(&mut self, store: &mut Store, key: &Key, object: &Value) {
        if key.group == "apps" && key.plural == "deployments" {
            self.reconcile(store, &key.namespace, &key.name);
        } else if key.group.is_empty()
            && key.plural == "pods"
            && let Some(owner) = owner_deployment(object)
        {
            self.reconcile(store, &key.namespace, &owner);
        }
    }

    /// Makes the pods of Deployment `namespace`/`name` follow its spec, and its status follow
    /// its pods. A Deployment that is gone is forgotten.
    fn reconcile(&mut self, store: &mut Store, namespace: &str, name: &str) {
        let key = Key {
            group: "apps".into(),
            plural: "deployments".into(),
            namespace: namespace.to_string(),
            name: name.to_string(),
        };
        let Some(deployment) = store.objects.get(&key).map(|s| s.object.clone()) else {
            self.templates.remove(&key);
            return;
        };
        let uid = meta_str(&deployment, "uid").unwrap_or_default().to_string();
        let replicas = deployment
            .pointer("/spec/replicas")
            .and_then(Value::as_u64)
            .unwrap_or(1) as usize;
        let template = deployment
            .pointer("/spec/template")
            .cloned()
            .unwrap_or(json!({}));
        let prefix = format!("{name}-");
        let owned = |objects: &BTreeMap<Key, Stored>| -> Vec<(usize, Key)> {
            let mut pods: Vec<(usize, Key)> = objects
                .iter()
                .filter(|(k, s)| {
                    k.group.is_empty()
                        && k.plural == "pods"
                        && k.namespace == namespace
                        && s.object
                            .pointer("/metadata/ownerReferences")
                            .and_then(Value::as_array)
                            .is_some_and(|refs| {
                                refs.iter().any(|r| {
                                    r.get("uid").and_then(Value::as_str) == Some(uid.as_str())
                                })
                            })
                })
                .map(|(k, _)| {
                    let n = k
                        .name
                        .strip_prefix(&prefix)
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(usize::MAX);
                    (n, k.clone())
                })
                .collect();
            pods.sort();
            pods
        };
        if self.templates.get(&key) != Some(&template) {
            for (_, k) in owned(&store.objects) {
                store.remove(&k);
            }
            self.templates.insert(key.clone(), template.clone());
        }
        let mut pods = owned(&store.objects);
        while pods.len() > replicas {
            let (_, k) = pods.pop().expect("more pods than replicas");
            store.remove(&k);
        }
        let mut n = 0;
        while pods.len() < replicas {
            while pods.iter().any(|(i, _)| *i == n) {
                n += 1;
            }
            let pod_key = Key {
                group: String::new(),
                plural: "pods".into(),
                namespace: namespace.to_string(),
                name: format!("{name}-{n}"),
            };
            let pod = new_pod(store.next_serial(), &pod_key, &deployment, &template);
            store.store_raw(&pod_key, pod, "ADDED");
            pods.push((n, pod_key));
            pods.sort();
        }
        let ready = pods
            .iter()
            .filter(|(_, k)| {
                store.objects[k]
                    .object
                    .pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .is_some_and(|cs| {
                        cs.iter().any(|c| {
                            c.get("type").and_then(Value::as_str) == Some("Ready")
                                && c.get("status").and_then(Value::as_str) == Some("True")
                        })
                    })
            })
            .count();
        let available = ready >= replicas;
        let mut status = json!({
            "observedGeneration": deployment.pointer("/metadata/generation").cloned().unwrap_or(json!(1)),
            "replicas": pods.len(),
            "updatedReplicas": pods.len(),
            "readyReplicas": ready,
            "availableReplicas": ready,
            "conditions": [
                {
                    "type": "Available",
                    "status": if available { "True" } else { "False" },
                    "reason": if available { "MinimumReplicasAvailable" } else { "MinimumReplicasUnavailable" },
                },
                {
                    "type": "Progressing",
                    "status": "True",
                    "reason": "NewReplicaSetAvailable",
                },
            ],
        });
        if pods.len() > ready {
            status["unavailableReplicas"] = json!(pods.len() - ready);
        }
        if deployment.get("status") != Some(&status) {
            let mut updated = deployment;
            updated["status"] = status;
            store.store_raw(&key, updated, "MODIFIED");
        }
    }
}

/// A Running, Ready pod `key` of `deployment` from pod template `template`; `serial` makes its
/// uid and IP.
fn new_pod(serial: u64, key: &Key, deployment: &Value, template: &Value) -> Value {
    let now = now_rfc3339();
    let mut meta = json!({
        "name": key.name,
        "namespace": key.namespace,
        "uid": format!("00000000-0000-4000-8000-{serial:012x}"),
        "creationTimestamp": now,
        "labels": template.pointer("/metadata/labels").cloned().unwrap_or(json!({})),
        "ownerReferences": [{
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": meta_str(deployment, "name").unwrap_or_default(),
            "uid": meta_str(deployment, "uid").unwrap_or_default(),
            "controller": true,
            "blockOwnerDeletion": true,
        }],
    });
    if let Some(a) = template.pointer("/metadata/annotations") {
        meta["annotations"] = a.clone();
    }
    let spec = template.get("spec").cloned().unwrap_or(json!({}));
    let containers: Vec<Value> = spec
        .get("containers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|c| {
            json!({
                "name": c.get("name").cloned().unwrap_or(json!("app")),
                "image": c.get("image").cloned().unwrap_or(json!("")),
                "imageID": "",
                "ready": true,
                "started": true,
                "restartCount": 0,
                "state": { "running": { "startedAt": now } },
            })
        })
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": spec,
        "status": {
            "phase": "Running",
            "podIP": format!("10.244.{}.{}", (serial / 250) % 250, serial % 250 + 1),
            "startTime": now,
            "conditions": [
                { "type": "Initialized", "status": "True" },
                { "type": "Ready", "status": "True" },
                { "type": "ContainersReady", "status": "True" },
                { "type": "PodScheduled", "status": "True" },
            ],
            "containerStatuses": containers,
        },
    })
}

/// The name of the Deployment that owns `pod`, if one does.
fn owner_deployment(pod: &Value) -> Option<String> {
    pod.pointer("/metadata/ownerReferences")?
        .as_array()?
        .iter()
        .find(|r| r.get("kind").and_then(Value::as_str) == Some("Deployment"))
        .and_then(|r| r.get("name")?.as_str().map(str::to_string))
}
