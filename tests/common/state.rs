//! A client-side view of a topic's retained state, built from `snapshot` and `patch` events, to
//! check that what a client rebuilds matches what the gateway holds.

use serde_json::Value;

/// A topic's state as a version-aware client keeps it: snapshots replace it, patches apply in
/// version order, stale ones are ignored, and a gap is an error.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StateView {
    pub version: u64,
    pub state: Value,
    pub snapshots: usize,
    pub patches: usize,
}

impl StateView {
    /// Applies a `snapshot` or `patch` event's data; other events are ignored.
    pub fn apply(&mut self, event: &str, data: &Value) {
        let version = data["version"].as_u64().expect("a version");
        match event {
            "snapshot" => {
                self.snapshots += 1;
                if version > self.version {
                    self.version = version;
                    self.state = data["state"].clone();
                }
            }
            "patch" => {
                if version <= self.version {
                    return;
                }
                assert_eq!(version, self.version + 1, "a gap in the versions: have {}, got {data}", self.version);
                if let Some(p) = data.get("patch") {
                    json_patch::merge(&mut self.state, p);
                } else {
                    let ops: json_patch::Patch = serde_json::from_value(data["json_patch"].clone()).unwrap();
                    json_patch::patch(&mut self.state, &ops).expect("a patch the gateway applied applies here too");
                }
                self.version = version;
                self.patches += 1;
            }
            _ => {}
        }
    }
}
