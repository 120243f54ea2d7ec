//! The shared-store path of the staging area, on an in-memory [`SharedStore`] (the real one,
//! etcd, is tested in the `cluster` crate): what a group's reads record, what a conflict
//! discards, what another failure keeps.

use crate::*;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Each key's value and the version it was written at.
type Versions = BTreeMap<Vec<u8>, (Vec<u8>, i64)>;

/// Versioned keys in memory; `fail` makes the next commit fail with a store error.
#[derive(Default)]
struct Memory {
    data: Mutex<Versions>,
    rev: Mutex<i64>,
    fail: Mutex<bool>,
}

impl SharedStore for Memory {
    fn get(&self, key: &[u8]) -> Result<(Option<Vec<u8>>, i64), RegisterError> {
        let d = self.data.lock().unwrap();
        Ok(d.get(key).map_or((None, 0), |(v, r)| (Some(v.clone()), *r)))
    }
    fn scan(&self, prefix: &[u8]) -> Result<Vec<Versioned>, RegisterError> {
        let d = self.data.lock().unwrap();
        Ok(d.iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, (v, r))| (k.clone(), v.clone(), *r))
            .collect())
    }
    fn commit(&self, reads: &ReadSet, writes: &Staged) -> Result<(), RegisterError> {
        if std::mem::take(&mut *self.fail.lock().unwrap()) {
            return Err(RegisterError::Shared("unreachable".into()));
        }
        let mut d = self.data.lock().unwrap();
        for (k, r) in reads {
            if d.get(k).map_or(0, |(_, r)| *r) != *r {
                return Err(RegisterError::Conflict);
            }
        }
        let mut rev = self.rev.lock().unwrap();
        *rev += 1;
        for (k, v) in writes {
            match v {
                Some(v) => d.insert(k.clone(), (v.clone(), *rev)),
                None => d.remove(k),
            };
        }
        Ok(())
    }
}

#[test]
fn a_conflict_discards_the_group_and_a_failure_keeps_it() {
    let mem = Arc::new(Memory::default());
    let a = Registers::shared(mem.clone());
    let b = Registers::shared(mem.clone());
    assert_eq!(a.incr("n", 1).unwrap(), 1);
    a.commit(Vec::new()).unwrap();

    // Both read n = 1; a commits first, so b's group rests on a stale read.
    assert_eq!(a.incr("n", 1).unwrap(), 2);
    assert_eq!(b.incr("n", 10).unwrap(), 11);
    b.set("other", &json!("b")).unwrap();
    a.commit(Vec::new()).unwrap();
    let mark = SideWrite {
        space: SIDE_SPACE_MIN,
        key: b"s".to_vec(),
        value: Some(vec![1]),
    };
    assert!(matches!(
        b.commit(vec![mark.clone()]),
        Err(RegisterError::Conflict)
    ));
    assert!(!b.is_dirty(), "the whole group is discarded");
    assert_eq!(b.get("other").unwrap(), None);
    assert!(
        b.side_entries(SIDE_SPACE_MIN).unwrap().is_empty(),
        "nor its side writes"
    );
    // Run again, it reads 2.
    assert_eq!(b.incr("n", 10).unwrap(), 12);
    b.commit(vec![mark.clone()]).unwrap();
    assert_eq!(a.get("n").unwrap(), Some(json!(12)));
    assert_eq!(
        b.side_entries(SIDE_SPACE_MIN).unwrap(),
        [(b"s".to_vec(), vec![1])]
    );

    // A store failure keeps what was staged for the next commit; the side writes are the
    // owner's to give again.
    a.set("kept", &json!(true)).unwrap();
    *mem.fail.lock().unwrap() = true;
    assert!(matches!(
        a.commit(vec![mark]),
        Err(RegisterError::Shared(_))
    ));
    assert!(a.is_dirty());
    a.commit(Vec::new()).unwrap();
    assert_eq!(b.get("kept").unwrap(), Some(json!(true)));

    // A side read is compared too: b read the mark, a moved it, b cannot commit.
    assert_eq!(b.side_get(SIDE_SPACE_MIN, b"s").unwrap(), Some(vec![1]));
    a.commit(vec![SideWrite {
        space: SIDE_SPACE_MIN,
        key: b"s".to_vec(),
        value: Some(vec![2]),
    }])
    .unwrap();
    b.set("x", &json!(1)).unwrap();
    assert!(matches!(b.commit(Vec::new()), Err(RegisterError::Conflict)));
}
