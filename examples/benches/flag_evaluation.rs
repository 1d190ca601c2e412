//! Feature-flag evaluation speed: in-process, per evaluation.
//!
//! Run by hand: `cargo bench -p deploykit-examples --bench flag_evaluation`.

use std::hint::black_box;
use std::time::Instant;

use deploykit_flags::{EvaluationContext, FlagSet};

const FLAGS: &str = r##"{
  "flags": {
    "static": { "state": "ENABLED", "variants": { "on": true, "off": false }, "defaultVariant": "on" },
    "split": {
      "state": "ENABLED",
      "variants": { "red": "#FF0000", "blue": "#0000FF", "green": "#00FF00", "yellow": "#FFFF00" },
      "defaultVariant": "red",
      "targeting": { "fractional": [["red", 25], ["blue", 25], ["green", 25], ["yellow", 25]] }
    },
    "targeted": {
      "state": "ENABLED",
      "variants": { "on": true, "off": false },
      "defaultVariant": "off",
      "targeting": { "if": [
        { "==": [{ "var": "plan" }, "internal"] }, "on",
        { "and": [
          { "sem_ver": [{ "var": "appVersion" }, ">=", "2.3.0"] },
          { "!": { "in": [{ "var": "country" }, ["DE", "FR"]] } }
        ] }, "on"
      ] }
    }
  }
}"##;

fn main() {
    let flags = FlagSet::from_json(FLAGS).expect("flags");
    let users: Vec<EvaluationContext> = (0..1024)
        .map(|i| {
            EvaluationContext::new(format!("user-{i}@example.com"))
                .with("plan", "free")
                .with("appVersion", "2.4.1")
                .with("country", if i % 2 == 0 { "US" } else { "DE" })
        })
        .collect();
    let n = 2_000_000;
    println!("| flag | evaluations | ns per evaluation |");
    println!("|---|---:|---:|");
    for (name, kind) in [("static", 0), ("split", 1), ("targeted", 2)] {
        let start = Instant::now();
        for i in 0..n {
            let ctx = &users[i % users.len()];
            match kind {
                0 => {
                    black_box(flags.boolean(name, false, ctx, None));
                }
                1 => {
                    black_box(flags.string(name, "#000", ctx, None));
                }
                _ => {
                    black_box(flags.boolean(name, false, ctx, None));
                }
            }
        }
        let ns = start.elapsed().as_nanos() as f64 / n as f64;
        println!("| {name} | {n} | {ns:.0} |");
    }
}
