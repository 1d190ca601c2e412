//! `[access]`: the policy as written, validated when the file is read; mistakes named with
//! their place.

use deploykit_config::Config;
use deploykit_core::access::AccessAction;
use deploykit_core::{Actor, EnvironmentName, Error, ServiceId};

const FILE: &str = "/srv/shop/deploykit.toml";

fn with_access(access: &str) -> String {
    format!(
        "application = \"shop\"\n[environments.production]\nkind = \"production\"\n[access]\n{access}\n"
    )
}

#[test]
fn the_policy_loads_and_decides() {
    let config = Config::from_toml_str(
        FILE,
        &with_access(
            r#"rules = [
  { role = "role:sre", action = "*", object = "*/*", effect = "allow" },
  { role = "role:sre", action = "teardown", object = "production/*", effect = "deny" },
]
bindings = { oncall = ["role:sre"] }
groups = { alice = ["oncall"] }"#,
        ),
    )
    .unwrap();
    let policy = config.access_policy().expect("a policy");
    let prod = EnvironmentName::new("production").unwrap();
    let web = ServiceId::new("web").unwrap();
    let alice = Actor::new("alice");
    assert!(
        policy
            .check(&alice, AccessAction::Failover, &prod, &web)
            .is_ok()
    );
    assert!(
        policy
            .check(&alice, AccessAction::Teardown, &prod, &web)
            .is_err()
    );
    assert!(
        policy
            .check(&Actor::new("mallory"), AccessAction::Deploy, &prod, &web)
            .is_err(),
        "the whole policy: no rule, no right"
    );
    assert!(policy.four_eyes_in_production, "on by default");
    let none = Config::from_toml_str(FILE, &with_access("").replace("[access]\n", "")).unwrap();
    assert!(none.access_policy().is_none());
}

#[test]
fn mistakes_are_named_with_their_place() {
    for (body, want) in [
        (
            r#"rules = [{ role = "role:sre", action = "deploy", object = "production", effect = "allow" }]"#,
            "access.rules[0].object",
        ),
        (
            r#"rules = [{ role = "role:sre", action = "launch", object = "production/*", effect = "allow" }]"#,
            "access.rules[0].action",
        ),
        (
            r#"rules = [{ role = "role:sre", action = "deploy", object = "production/*", effect = "maybe" }]"#,
            "unknown variant `maybe`",
        ),
        (r#"owners = ["alice"]"#, "unknown field `owners`"),
    ] {
        let e = match Config::from_toml_str(FILE, &with_access(body)) {
            Err(Error::InvalidSpec { field, reason }) => format!("{field}: {reason}"),
            other => panic!("{body}: {other:?}"),
        };
        assert!(e.starts_with("/srv/shop/deploykit.toml:4:"), "{e}");
        assert!(e.contains(want), "{body}\n→ {e}\nwanted {want}");
    }
}
