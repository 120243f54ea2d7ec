//! The on-disk graph store: the graphs in force, kept under the state dir so that they converge
//! again after a restart, and each graph's engine state (its pending refreshes).

use bus::Action;
use engine::os::{atomic_write, atomic_write_unsynced, hex};
use std::path::{Path, PathBuf};

/// Where the actor keeps its graphs and their engine state: `<state>/actor-<name>/`.
pub(crate) struct Store {
    graphs: PathBuf,
    engine: PathBuf,
    /// The last sequence applied from each issuer key (JSON object), so that a restart, even
    /// after a kill -9, does not reopen replays of older signed actions.
    issuers: PathBuf,
}

/// Issuer key id -> the last sequence applied from it.
pub(crate) type LastSeqs = std::collections::BTreeMap<String, u64>;

impl Store {
    pub(crate) fn new(state: &Path, name: &str) -> Store {
        let dir = state.join(format!("actor-{}", safe_name(name)));
        Store {
            graphs: dir.join("graphs"),
            engine: dir.join("engine"),
            issuers: dir.join("issuers.json"),
        }
    }

    /// The last sequences kept by a previous run; none when there is no (readable) file.
    pub(crate) fn last_seqs(&self) -> LastSeqs {
        match std::fs::read(&self.issuers) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                tracing::error!(file = %self.issuers.display(), "unreadable last sequences: {e}");
                LastSeqs::new()
            }),
            Err(_) => LastSeqs::new(),
        }
    }

    /// Keep the last sequences, atomically.
    pub(crate) fn save_last_seqs(&self, last: &LastSeqs) {
        let result = serde_json::to_vec(last)
            .map_err(std::io::Error::other)
            .and_then(|bytes| {
                if let Some(dir) = self.issuers.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                // Made durable by the next fsynced graph write (or lost with the machine, when
                // the stored graphs say how far we got).
                atomic_write_unsynced(&self.issuers, &bytes)
            });
        if let Err(e) = result {
            tracing::error!(file = %self.issuers.display(), "cannot persist last sequences: {e}");
        }
    }

    fn graph_file(&self, name: &str) -> PathBuf {
        self.graphs.join(format!("{}.json", hex(name)))
    }

    /// The engine's state dir for the graph under `name`.
    pub(crate) fn engine_dir(&self, name: &str) -> PathBuf {
        self.engine.join(hex(name))
    }

    /// Keep `action` as the graph in force under its name.
    pub(crate) fn save(&self, action: &Action) {
        let file = self.graph_file(&action.name);
        let result = serde_json::to_vec(action)
            .map_err(std::io::Error::other)
            .and_then(|bytes| {
                std::fs::create_dir_all(&self.graphs)?;
                atomic_write(&file, &bytes, None)
            });
        if let Err(e) = result {
            tracing::error!(name = %action.name, file = %file.display(), "cannot persist graph: {e}");
        }
    }

    /// Forget the graph under `name`, and its engine state (pending refreshes).
    pub(crate) fn remove(&self, name: &str) {
        let _ = std::fs::remove_file(self.graph_file(name));
        let _ = std::fs::remove_dir_all(self.engine_dir(name));
    }

    /// The graphs kept by a previous run, oldest first. An unreadable one is logged and skipped.
    pub(crate) fn load(&self) -> Vec<Action> {
        let entries = match std::fs::read_dir(&self.graphs) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
            Err(e) => {
                tracing::error!(dir = %self.graphs.display(), "cannot read kept graphs: {e}");
                return Vec::new();
            }
        };
        let mut actions = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Action>(&b).map_err(|e| e.to_string()))
            {
                Ok(a) => actions.push(a),
                Err(e) => tracing::error!(file = %path.display(), "skipping a kept graph: {e}"),
            }
        }
        actions.sort_by_key(|a| a.seq);
        actions
    }
}

/// `name` as a file name: anything but `[A-Za-z0-9._-]` becomes `_`.
pub(crate) fn safe_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn kept_graphs_round_trip_and_names_are_file_safe() {
        let dir = std::env::temp_dir().join(format!("reflex-actor-store-{}", std::process::id()));
        let store = Store::new(&dir, "web/1");
        assert!(store.graphs.starts_with(dir.join("actor-web_1")));
        let action = Action {
            id: "a1".into(),
            name: "deploy/app".into(),
            seq: 7,
            target: bus::Target::All,
            graph: json!([{"kind": "noop", "name": "n"}]),
            origin: bus::Origin::default(),
            expires: None,
            life: bus::Life::Keep,
            prev: 0,
        };
        store.save(&action);
        assert_eq!(store.load(), vec![action.clone()]);
        assert!(store
            .graph_file("deploy/app")
            .ends_with("6465706c6f792f617070.json"));
        store.remove("deploy/app");
        assert!(store.load().is_empty());
        let last = LastSeqs::from([("k".to_string(), 9)]);
        store.save_last_seqs(&last);
        assert_eq!(Store::new(&dir, "web/1").last_seqs(), last);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
