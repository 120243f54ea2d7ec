//! The `file` kind's wider features on real files: source, owner/group, directories with
//! recurse and purge, each watched and repaired live.

mod util;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use engine::{Engine, RunOptions};
use serde_json::json;
use util::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_owner_and_group_are_managed_and_watched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    fs::write(&src, "from source\n").expect("src");
    let g = graph(json!([
        {"kind": "file", "name": p(&dst), "source": p(&src), "owner": "65534", "group": "65534"},
    ]));
    let engine = Engine::new().expect("engine");
    let mut running = engine.run(g, RunOptions::default());
    let report = running.first_report().await;
    assert!(report.ok, "{report:?}");
    let meta = fs::metadata(&dst).expect("dst");
    assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
    assert_eq!(read(&dst), "from source\n");

    // A new source is followed; so is an external chown.
    fs::write(&src, "source v2\n").expect("src v2");
    eventually("source change followed", || read(&dst) == "source v2\n").await;
    std::os::unix::fs::chown(&dst, Some(0), Some(0)).expect("chown");
    eventually("owner repaired", || {
        fs::metadata(&dst).is_ok_and(|m| m.uid() == 65534 && m.gid() == 65534)
    })
    .await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_comes_first_and_is_recreated_with_its_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sub = dir.path().join("app");
    let conf = sub.join("conf");
    // Listed file first: the autoedge (parent directory) orders them anyway.
    let g = graph(json!([
        {"kind": "file", "name": p(&conf), "content": "c\n"},
        {"kind": "file", "name": format!("{}/", p(&sub)), "mode": "0750"},
    ]));
    let engine = Engine::new().expect("engine");
    let mut running = engine.run(g, RunOptions::default());
    let report = running.first_report().await;
    assert!(report.ok, "{report:?}");
    assert_eq!(
        fs::metadata(&sub).expect("dir").permissions().mode() & 0o7777,
        0o750
    );
    // Moved away in one step (an rm -rf would race the repair it triggers).
    fs::rename(&sub, dir.path().join("moved")).expect("mv");
    eventually("directory and file restored", || read(&conf) == "c\n").await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sourced_directory_mirrors_recurses_and_purges_live() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    fs::create_dir_all(src.join("sub")).expect("src tree");
    fs::write(src.join("a"), "a\n").expect("a");
    fs::write(src.join("sub/b"), "b\n").expect("b");
    fs::create_dir(&dst).expect("dst");
    fs::write(dst.join("stale"), "old\n").expect("stale");
    let g = graph(json!([
        {"kind": "file", "name": format!("{}/", p(&dst)), "source": p(&src), "recurse": true, "purge": true},
    ]));
    let engine = Engine::new().expect("engine");
    let mut running = engine.run(g, RunOptions::default());
    let report = running.first_report().await;
    assert!(report.ok, "{report:?}");
    assert_eq!(read(&dst.join("a")), "a\n");
    assert_eq!(read(&dst.join("sub/b")), "b\n");
    assert!(!dst.join("stale").exists(), "not purged");

    // Live: an extra entry is purged, a removed one restored, a new source file mirrored.
    fs::write(dst.join("intruder"), "x").expect("intruder");
    eventually("intruder purged", || !dst.join("intruder").exists()).await;
    fs::remove_file(dst.join("a")).expect("rm a");
    eventually("a restored", || read(&dst.join("a")) == "a\n").await;
    fs::write(src.join("c"), "c\n").expect("new source file");
    eventually("c mirrored", || read(&dst.join("c")) == "c\n").await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absent_directory_is_removed_only_recursively_when_told() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (keep, gone) = (dir.path().join("keep"), dir.path().join("gone"));
    for d in [&keep, &gone] {
        fs::create_dir(d).expect("mkdir");
        fs::write(d.join("f"), "x").expect("f");
    }
    let g = graph(json!([
        {"kind": "file", "name": format!("{}/", p(&keep)), "state": "absent"},
        {"kind": "file", "name": format!("{}/", p(&gone)), "state": "absent", "recurse": true},
    ]));
    let engine = Engine::new().expect("engine");
    let mut running = engine.run(g, RunOptions::default());
    let report = running.first_report().await;
    assert_eq!(report.changed, [format!("file:{}/", p(&gone))]);
    assert_eq!(report.errors.len(), 1, "{report:?}");
    assert!(keep.join("f").exists() && !gone.exists());
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_forms_comply() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    fs::create_dir(&src).expect("src");
    fs::write(src.join("x"), "x").expect("x");
    fs::write(dir.path().join("one"), "1").expect("one");
    for case in [
        json!({"kind": "file", "name": format!("{}/d1/", p(dir.path())), "mode": "0700"}),
        json!({"kind": "file", "name": format!("{}/d2/", p(dir.path())), "source": p(&src), "recurse": true, "purge": true}),
        json!({"kind": "file", "name": p(&dir.path().join("copy")), "source": p(&dir.path().join("one")), "owner": "root"}),
    ] {
        if let Err(e) = engine::compliance::check(case.clone()).await {
            panic!("{case}: {e}");
        }
    }
}
